using ThinFast.Interop;

namespace ThinFast.IO;

/// <summary>
/// What a path names, independent of the path: the file system and inode of a file, or the
/// device number of a block device (whichever node or symlink reaches it). Two paths with the same
/// identity are the same storage, which is how a pool recognises its own files behind another name.
/// </summary>
public readonly record struct FileIdentity(bool IsBlockDevice, uint Major, uint Minor, ulong Inode)
{
    /// <summary>The identity of what <paramref name="path"/> names (symlinks followed), or null
    /// when it does not exist or the platform cannot say.</summary>
    public static FileIdentity? Of(string path)
    {
        if (!OperatingSystem.IsLinux())
            return null;
        if (Libc.PathStatx(path, Libc.STATX_TYPE | Libc.STATX_INO, out var st) < 0)
            return null;
        return (st.Mode & Libc.S_IFMT) == Libc.S_IFBLK
            ? new FileIdentity(true, st.RdevMajor, st.RdevMinor, 0)
            : new FileIdentity(false, st.DevMajor, st.DevMinor, st.Ino);
    }

    /// <summary>Whether <paramref name="path"/> itself (not a symlink's target) is a unix socket.</summary>
    public static bool IsSocket(string path) =>
        OperatingSystem.IsLinux()
        && Libc.LStatx(path, Libc.STATX_TYPE, out var st) == 0
        && (st.Mode & Libc.S_IFMT) == Libc.S_IFSOCK;
}
