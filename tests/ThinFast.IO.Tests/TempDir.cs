namespace ThinFast.IO.Tests;

/// <summary>A fresh directory under /var/tmp, which is on a disk file system here, so O_DIRECT
/// goes through the block layer (tmpfs would refuse it or fake it).</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        string root = Directory.Exists("/var/tmp") ? "/var/tmp" : System.IO.Path.GetTempPath();
        Path = System.IO.Path.Combine(root, "thinfast-io-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
