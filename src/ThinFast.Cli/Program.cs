using System.Xml;
using ThinFast.Engine;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Cli;

/// <summary>Exit codes: 0 success, 1 error (including a check that found damage), 2 usage.</summary>
public static partial class Program
{
    public const int Ok = 0, Error = 1, Usage = 2;

    private const string MainHelp = """
        thinfast: a userspace dm-thin-compatible thin-provisioning pool served over NBD

        Usage: thinfast COMMAND [ARGS]   (thinfast COMMAND --help for details)

        Pools:
          pool create DIR [--block-size 64K] [--data-size 10G] [--metadata-size auto|SIZE]
                          [--metadata PATH --data PATH]
          pool info DIR [--json]            geometry, files, volumes
          pool status DIR [--json]          dm-thin status: usage, free, mode, low-water
          pool grow DIR --data-size SIZE    grow the data device
          pool check DIR|METADATA [--json]  like thin_check, plus a full reference recount
          pool dump DIR|METADATA [--format xml|human] [-o FILE]   thin_dump-compatible XML
          pool restore DIR|METADATA -i FILE.xml                   like thin_restore

        Volumes:
          volume create DIR NAME --size SIZE [--origin PATH]
          volume snapshot DIR SOURCE NAME
          volume delete DIR NAME
          volume list DIR [--json]

        Serving:
          serve DIR [--socket PATH] [--tcp [ADDR:]PORT] [--volume NAME]... [--read-only] [--pid-file PATH] [--tls-certs DIR]
          demo [DIR] [--tcp [ADDR:]PORT] [--exit-after-check]

        Sizes take K, M, G, T (powers of 1024) or s (512-byte sectors).
        Exit status: 0 success, 1 error (a check that found damage included), 2 bad usage.
        """;

    private const string PoolHelp = """
        Usage: thinfast pool SUBCOMMAND DIR ...   (thinfast pool SUBCOMMAND --help for details)

          create DIR    make a pool: metadata, data and pool.json (or over given devices)
          info DIR      geometry, files, transaction id and volumes
          status DIR    dm-thin's status line: usage, free space, mode, low-water
          grow DIR      grow the data device and its space map
          check DIR     thin_check's checks plus a full reference recount
          dump DIR      the metadata as thin_dump's XML (or a human table)
          restore DIR   metadata from thin_dump's XML, as thin_restore
        """;

    private const string VolumeHelp = """
        Usage: thinfast volume SUBCOMMAND DIR ...   (thinfast volume SUBCOMMAND --help for details)

          create DIR NAME        a thin volume, empty or over a read-only origin
          snapshot DIR SRC NAME  an instant snapshot sharing every block of SRC
          delete DIR NAME        delete a volume, freeing the blocks only it used
          list DIR               the volumes, their sizes, origins and use
        """;

    public static int Main(string[] argv)
    {
        try
        {
            return Dispatch(argv);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"thinfast: {e.Message} (see thinfast --help)");
            return Usage;
        }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"thinfast: {OneLine(e)}");
            return Error;
        }
    }

    internal static bool IsUserError(Exception e) =>
        e is PoolException or BlockDeviceException or MetadataCorruptException or MetadataSpaceExhaustedException
            or ArgumentException or IOException or UnauthorizedAccessException or FormatException or XmlException or DemoException;

    // An ArgumentException's message ends in "(Parameter 'name')", a name from our code that
    // means nothing to the user.
    internal static string OneLine(Exception e) =>
        (e is ArgumentException { ParamName: { } name } a ? a.Message.Replace($" (Parameter '{name}')", "", StringComparison.Ordinal) : e.Message)
            .ReplaceLineEndings(" ");

    private static int Dispatch(string[] argv)
    {
        if (argv.Length == 0)
        {
            Console.Error.Write(MainHelp);
            return Usage;
        }
        if (argv[0] is "-h" or "--help" or "help")
        {
            Console.Out.Write(MainHelp);
            return Ok;
        }
        if (argv[0] == "--version")
        {
            Console.Out.WriteLine("thinfast 0.1");
            return Ok;
        }
        ReadOnlySpan<string> rest = argv.AsSpan(1);
        switch (argv[0])
        {
            case "pool":
                return rest.Length == 0 ? throw new UsageException("pool needs a subcommand: create, info, status, grow, check, dump, restore") : rest[0] switch
                {
                    "create" => PoolCommands.Create(rest[1..]),
                    "info" => PoolCommands.Info(rest[1..]),
                    "status" => PoolCommands.Status(rest[1..]),
                    "grow" => PoolCommands.Grow(rest[1..]),
                    "check" => PoolCommands.Check(rest[1..]),
                    "dump" => PoolCommands.Dump(rest[1..]),
                    "restore" => PoolCommands.Restore(rest[1..]),
                    "-h" or "--help" => Help(PoolHelp),
                    _ => throw new UsageException($"unknown pool subcommand '{PoolManifest.Shown(rest[0])}'"),
                };
            case "volume":
                return rest.Length == 0 ? throw new UsageException("volume needs a subcommand: create, snapshot, delete, list") : rest[0] switch
                {
                    "create" => VolumeCommands.Create(rest[1..]),
                    "snapshot" => VolumeCommands.Snapshot(rest[1..]),
                    "delete" => VolumeCommands.Delete(rest[1..]),
                    "list" => VolumeCommands.List(rest[1..]),
                    "-h" or "--help" => Help(VolumeHelp),
                    _ => throw new UsageException($"unknown volume subcommand '{PoolManifest.Shown(rest[0])}'"),
                };
            case "serve":
                return ServeCommand.Run(rest);
            case "demo":
                return DemoCommand.Run(rest);
            default:
                throw new UsageException($"unknown command '{PoolManifest.Shown(argv[0])}'");
        }
    }

    internal static int Help(string text)
    {
        Console.Out.Write(text);
        return Ok;
    }

    /// <summary>True when the argument list asks for help; commands print their usage then.</summary>
    internal static bool WantsHelp(ReadOnlySpan<string> argv)
    {
        foreach (string a in argv)
            if (a is "-h" or "--help")
                return true;
        return false;
    }

    /// <summary>Progress lines for long work, only when a person is watching stderr.</summary>
    internal static Action<string>? Progress => Console.IsErrorRedirected ? null : message => Console.Error.WriteLine($"thinfast: {message}...");
}
