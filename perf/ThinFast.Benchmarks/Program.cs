using BenchmarkDotNet.Running;
using ThinFast.Benchmarks;

// Two kinds of benchmark live here:
//  - BenchmarkDotNet classes (micro-benchmarks with MemoryDiagnoser): `-- bdn [BDN args]`;
//  - comparison runs that measure ThinFast next to a peer or limit (fio, qemu-nbd, ...) in the same
//    run and print both figures and the ratio: `-- NAME [args]`, `-- list` for the names.
if (args.Length > 0 && args[0] == "bdn")
{
    BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args[1..]);
    return 0;
}

var runs = typeof(Program).Assembly.GetTypes()
    .Where(t => typeof(IComparisonRun).IsAssignableFrom(t) && !t.IsAbstract && !t.IsInterface)
    .Select(t => (IComparisonRun)Activator.CreateInstance(t)!)
    .OrderBy(r => r.Name)
    .ToList();
if (args.Length == 0 || args[0] is "list" or "--help" or "-h")
{
    Console.WriteLine("usage: ThinFast.Benchmarks bdn [BenchmarkDotNet args] | NAME [args]");
    foreach (var r in runs)
        Console.WriteLine($"  {r.Name,-24} {r.Description}");
    return args.Length == 0 ? 2 : 0;
}
var run = runs.FirstOrDefault(r => r.Name == args[0]);
if (run is null)
{
    Console.Error.WriteLine($"unknown benchmark '{args[0]}'; try 'list'");
    return 2;
}
return await run.RunAsync(args[1..]);

namespace ThinFast.Benchmarks
{
    /// <summary>A benchmark that measures ThinFast and a peer or physical limit in one run and
    /// prints both figures and their ratio.</summary>
    public interface IComparisonRun
    {
        string Name { get; }
        string Description { get; }
        Task<int> RunAsync(string[] args);
    }
}
