using Microsoft.Win32.SafeHandles;

namespace ThinFast.Nbd;

/// <summary>
/// A few file descriptors the server holds back from clients. When accept fails for lack of
/// descriptors they are given up, so the runtime itself still has some while the server backs off
/// (a new thread, an assembly load): with none at all the .NET runtime dies ("Out of memory.").
/// Clients are taken again only once the whole reserve could be taken back.
/// </summary>
internal sealed class DescriptorReserve : IDisposable
{
    private const int Count = 16;
    private readonly List<SafeFileHandle> _held = new();
    private readonly object _lock = new();

    public DescriptorReserve() => TryRestore();

    /// <summary>Gives the descriptors up.</summary>
    public void Release()
    {
        lock (_lock)
        {
            foreach (var h in _held)
                h.Dispose();
            _held.Clear();
        }
    }

    /// <summary>Takes the descriptors again; true when all of them are held.</summary>
    public bool TryRestore()
    {
        if (!OperatingSystem.IsLinux())
            return true;
        lock (_lock)
        {
            try
            {
                while (_held.Count < Count)
                    _held.Add(File.OpenHandle("/dev/null", FileMode.Open, FileAccess.Read));
                return true;
            }
            catch (IOException)
            {
                return false;
            }
        }
    }

    public void Dispose() => Release();
}
