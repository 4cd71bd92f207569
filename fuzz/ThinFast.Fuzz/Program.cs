using SharpFuzz;
using ThinFast.Fuzz;

// The fuzz harness: afl-fuzz runs "ThinFast.Fuzz run TARGET" on an instrumented copy of this
// folder (docs/fuzzing.md); the other commands are for people and for the replay tests' tools.
const string Usage = """
    usage: ThinFast.Fuzz list                       the targets and what they cover
           ThinFast.Fuzz run TARGET                 under afl-fuzz (SharpFuzz persistent mode)
           ThinFast.Fuzz replay TARGET PATH...      runs files (or every file in folders) in-process
           ThinFast.Fuzz seed DIR                   writes each target's generated seeds to DIR/TARGET/
    """;

if (args.Length == 0)
{
    Console.Error.Write(Usage);
    return 2;
}
switch (args[0])
{
    case "list" when args.Length == 1:
        foreach (var t in FuzzTargets.All)
            Console.WriteLine($"{t.Name,-18} {t.Description}");
        return 0;
    case "run" when args.Length == 2:
    {
        var target = Target(args[1]);
        if (target is null)
            return 2;
        // Nothing instrumented may run before Fuzzer.Run has mapped afl's coverage memory: the
        // seed image and the NBD server are built lazily, in the first input's run.
        Fuzzer.Run(stream =>
        {
            using var input = new MemoryStream();
            stream.CopyTo(input);
            target.Run(input.GetBuffer().AsSpan(0, (int)input.Length));
        });
        return 0;
    }
    case "replay" when args.Length >= 3:
    {
        var target = Target(args[1]);
        if (target is null)
            return 2;
        var files = args[2..].SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p).Order() : (IEnumerable<string>)[p]).ToList();
        int crashes = 0;
        foreach (string file in files)
        {
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                crashes++;
                Console.WriteLine($"CRASH {file}\n{e}\n");
            }
        }
        Console.WriteLine($"{target.Name}: {files.Count} inputs, {crashes} crashed");
        return crashes == 0 ? 0 : 1;
    }
    case "seed" when args.Length == 2:
        foreach (var t in FuzzTargets.All)
        {
            string dir = Path.Combine(args[1], t.Name);
            Directory.CreateDirectory(dir);
            foreach (var (name, contents) in t.Seeds())
                File.WriteAllBytes(Path.Combine(dir, name), contents);
        }
        return 0;
    default:
        Console.Error.Write(Usage);
        return 2;
}

static IFuzzTarget? Target(string name)
{
    var target = FuzzTargets.Find(name);
    if (target is null)
        Console.Error.WriteLine($"no target '{name}'; targets: {string.Join(", ", FuzzTargets.All.Select(t => t.Name))}");
    return target;
}
