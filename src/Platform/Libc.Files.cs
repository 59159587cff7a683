using System.Runtime.InteropServices;

namespace P11Proxy.Platform;

/// <summary>File-system and descriptor calls (the broker's socket place, P11Proxy.Wire.Transport.UnixSocketPlace).</summary>
public static unsafe partial class Libc
{
    public const int ENOENT = 2;
    public const int EACCES = 13;
    public const int EEXIST = 17;
    public const int ENOTDIR = 20;
    public const int ECONNREFUSED = 111;
    public const int EMFILE = 24;
    public const int ENFILE = 23;
    public const int ENOBUFS = 105;
    public const int ENOMEM = 12;
    public const int ECONNABORTED = 103;

    public const int F_GETFD = 1;
    public const int F_SETFD = 2;
    public const int F_GETFL = 3;
    public const int F_SETFL = 4;
    public const int F_DUPFD_CLOEXEC = 1030;
    public const int FD_CLOEXEC = 1;
    public const int O_NONBLOCK = 0x800;
    public const int SOCK_NONBLOCK = 0x800;
    public const int MSG_DONTWAIT = 0x40;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fcntl(int fd, int command, int argument);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mkdir(string path, uint mode);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chmod(string path, uint mode);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chown(string path, uint owner, uint group);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int unlink(string path);

    [LibraryImport("libc")]
    public static partial uint umask(uint mask);

    [LibraryImport("libc")]
    public static partial uint geteuid();

    private const int AT_FDCWD = -100;
    private const int AT_SYMLINK_NOFOLLOW = 0x100;
    private const uint STATX_BASIC_STATS = 0x7ff;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int directoryFd, string path, int flags, uint mask, Span<byte> buffer);

    /// <summary>
    /// lstat through statx, whose layout is the same on every architecture: the path itself, a
    /// symbolic link not followed. Null when it cannot be examined (errno in <paramref name="errno"/>).
    /// </summary>
    public static FileIdentity? LStat(string path, out int errno)
    {
        Span<byte> buffer = stackalloc byte[256];
        if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buffer) != 0)
        {
            errno = LastError;
            return null;
        }
        errno = 0;
        // struct statx: stx_uid @20, stx_gid @24, stx_mode @28 (u16), stx_ino @32,
        // stx_dev_major @136, stx_dev_minor @140.
        return new FileIdentity(
            Mode: MemoryMarshal.Read<ushort>(buffer[28..]),
            Uid: MemoryMarshal.Read<uint>(buffer[20..]),
            Gid: MemoryMarshal.Read<uint>(buffer[24..]),
            Inode: MemoryMarshal.Read<ulong>(buffer[32..]),
            Device: ((ulong)MemoryMarshal.Read<uint>(buffer[136..]) << 32) | MemoryMarshal.Read<uint>(buffer[140..]));
    }
}

/// <summary>What lstat says about a path: type and permission bits, owner, and which file it is.</summary>
public readonly record struct FileIdentity(uint Mode, uint Uid, uint Gid, ulong Inode, ulong Device)
{
    public const uint TypeMask = 0xf000;
    public const uint Socket = 0xc000;
    public const uint SymbolicLink = 0xa000;
    public const uint Regular = 0x8000;
    public const uint Directory = 0x4000;

    public uint Type => Mode & TypeMask;
    public uint Permissions => Mode & 0xfff;

    public bool SameFileAs(FileIdentity other) => Inode == other.Inode && Device == other.Device;

    public string TypeName => Type switch
    {
        Socket => "a socket",
        SymbolicLink => "a symbolic link",
        Regular => "a regular file",
        Directory => "a directory",
        0x6000 => "a block device",
        0x2000 => "a character device",
        0x1000 => "a FIFO",
        _ => "a file of unknown type",
    };
}
