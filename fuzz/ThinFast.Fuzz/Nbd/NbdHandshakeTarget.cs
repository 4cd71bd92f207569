using static ThinFast.Fuzz.Nbd.NbdClientStream;

namespace ThinFast.Fuzz.Nbd;

/// <summary>
/// The client's whole stream from its flags on: option haggling (every option the server knows,
/// and others), and whatever requests follow a successful GO or EXPORT_NAME.
/// </summary>
public sealed class NbdHandshakeTarget : IFuzzTarget
{
    public string Name => "nbd-handshake";

    public string Description => "NBD option haggling: client flags, option headers and data (INFO/GO, meta contexts, LIST, EXPORT_NAME...)";

    public void Run(ReadOnlySpan<byte> input) => NbdRig.Instance.Converse(input);

    public IEnumerable<(string Name, byte[] Contents)> Seeds()
    {
        yield return ("go-with-info.bin", new NbdClientStream().ClientFlags(FixedNewstyle | NoZeroes)
            .InfoOrGo(OptGo, "disk", InfoName, InfoDescription, InfoBlockSize)
            .Request(CmdDisconnect, 0, 0, 0).ToArray());
        yield return ("meta-context-then-go.bin", new NbdClientStream().ClientFlags(FixedNewstyle | NoZeroes)
            .Option(OptStructuredReply)
            .MetaContext(OptListMetaContext, "disk")
            .MetaContext(OptSetMetaContext, "disk", "base:allocation", "qemu:dirty-bitmap:x")
            .InfoOrGo(OptGo, "")
            .Request(CmdBlockStatus, 0, 0, 65536)
            .Request(CmdDisconnect, 0, 0, 0).ToArray());
        yield return ("list-info-abort.bin", new NbdClientStream().ClientFlags(FixedNewstyle)
            .Option(OptList)
            .InfoOrGo(OptInfo, "ro", InfoName)
            .Option(OptAbort).ToArray());
        yield return ("export-name.bin", new NbdClientStream().ClientFlags(FixedNewstyle)
            .Option(OptExportName, "disk"u8.ToArray())
            .Request(CmdRead, 0, 0, 512)
            .Request(CmdDisconnect, 0, 0, 0).ToArray());
        yield return ("refused-options.bin", new NbdClientStream().ClientFlags(FixedNewstyle | NoZeroes)
            .Option(OptStartTls)
            .Option(42, [1, 2, 3])
            .Option(OptStructuredReply, [0])
            .MetaContext(OptSetMetaContext, "nope", "base:")
            .InfoOrGo(OptGo, "nope")
            .Option(OptAbort).ToArray());
    }
}
