using static ThinFast.Fuzz.Nbd.NbdClientStream;

namespace ThinFast.Fuzz.Nbd;

/// <summary>
/// The transmission phase: a fixed, valid handshake, then the input as the stream of request
/// headers (and WRITE payloads). The input's first byte picks the session the requests arrive
/// in: bit 0 structured replies with base:allocation selected, bit 1 the read-only export, so
/// the request validation sees every combination it branches on.
/// </summary>
public sealed class NbdTransmissionTarget : IFuzzTarget
{
    private static readonly byte[][] Handshakes = [.. Enumerable.Range(0, 4).Select(Handshake)];

    public string Name => "nbd-transmission";

    public string Description => "NBD request headers and payloads after GO: magic, flags, command, offset, length, WRITE payloads";

    public void Run(ReadOnlySpan<byte> input)
    {
        // An empty input is a session that ends after GO (see MetadataBlockTarget.Run for why
        // every input, empty too, must reach the server).
        byte[] handshake = Handshakes[input.IsEmpty ? 0 : input[0] & 3];
        ReadOnlySpan<byte> requests = input.IsEmpty ? [] : input[1..];
        byte[] stream = new byte[handshake.Length + requests.Length];
        handshake.CopyTo(stream, 0);
        requests.CopyTo(stream.AsSpan(handshake.Length));
        NbdRig.Instance.Converse(stream);
    }

    private static byte[] Handshake(int session)
    {
        bool structured = (session & 1) != 0;
        string export = (session & 2) != 0 ? "ro" : "disk";
        var client = new NbdClientStream().ClientFlags(FixedNewstyle | NoZeroes);
        if (structured)
            client.Option(OptStructuredReply).MetaContext(OptSetMetaContext, export, "base:allocation");
        return client.InfoOrGo(OptGo, export).ToArray();
    }

    public IEnumerable<(string Name, byte[] Contents)> Seeds()
    {
        byte[] sector = [.. Enumerable.Range(0, 512).Select(i => (byte)i)];
        for (int session = 0; session < 4; session++)
        {
            var requests = new NbdClientStream()
                .Request(CmdWrite, FlagFua, 4096, 512, sector)
                .Request(CmdRead, (ushort)(session % 2 == 1 ? FlagDontFragment : 0), 0, 8192)
                .Request(CmdFlush, 0, 0, 0)
                .Request(CmdTrim, 0, 65536, 131072)
                .Request(CmdWriteZeroes, FlagNoHole, 8192, 4096)
                .Request(CmdWriteZeroes, FlagFastZero, 0, 65536)
                .Request(CmdCache, 0, 0, 1 << 20)
                .Request(CmdBlockStatus, FlagReqOne, 0, 1 << 20)
                .Request(CmdBlockStatus, 0, 32768, 200000)
                .Request(CmdRead, 0, (1 << 20) - 512, 1024)
                .Request(CmdDisconnect, 0, 0, 0)
                .ToArray();
            yield return ($"session-{session}.bin", [(byte)session, .. requests]);
        }
    }
}
