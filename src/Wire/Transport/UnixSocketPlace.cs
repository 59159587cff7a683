namespace P11Proxy.Wire.Transport;

/// <summary>The socket path is unusable; the message says why and what to do. A broker exits with status 2.</summary>
public sealed class SocketPlaceException(string message) : Exception(message);

/// <summary>
/// Gets a socket path ready for a listener and cleans up after it, without ever touching what is
/// not the broker's: missing directories are created with the mode <see cref="SocketAccess"/>
/// says (whatever the umask); a socket left by a broker that died (nothing answers on it) is
/// replaced; a live socket, a directory, a regular file or a link at the path is an error; at exit
/// the socket is removed only when the path still names the very socket this listener bound.
/// </summary>
public static class UnixSocketPlace
{
    /// <summary>What <see cref="Prepare"/> did, for the start-up log.</summary>
    public sealed record Preparation(IReadOnlyList<string> CreatedDirectories, bool ReplacedStaleSocket);

    public static Preparation Prepare(string path, SocketAccess access)
    {
        if (!path.StartsWith('/'))
            path = Path.GetFullPath(path);
        var created = CreateDirectories(Path.GetDirectoryName(path)!, access);
        var existing = Libc.LStat(path, out int errno);
        if (existing is null)
        {
            if (errno == Libc.ENOENT) return new Preparation(created, false);
            throw new SocketPlaceException($"cannot examine {path}: {Libc.Describe(errno)}");
        }
        var found = existing.Value;
        if (found.Type != FileIdentity.Socket)
            throw new SocketPlaceException(
                $"{path} is {found.TypeName}, not a socket; remove it or choose another path with --socket");

        switch (Probe(path))
        {
            case 0:
                throw new SocketPlaceException(
                    $"another server is already listening on {path} (a socket owned by uid {found.Uid}); stop it or choose another path with --socket");
            case Libc.ECONNREFUSED:
                // Nobody listens: a socket left behind by a server that died. Replace it, but only
                // if the path still names that socket (it may have been replaced meanwhile).
                if (Libc.LStat(path, out _) is { } again && again.SameFileAs(found) && Libc.unlink(path) != 0 &&
                    Libc.LastError != Libc.ENOENT)
                    throw new SocketPlaceException($"cannot remove the stale socket {path}: {Libc.Describe(Libc.LastError)}");
                return new Preparation(created, true);
            case Libc.ENOENT:
                return new Preparation(created, false); // removed meanwhile
            case var other:
                throw new SocketPlaceException($"cannot tell whether a server listens on {path}: {Libc.Describe(other)}");
        }
    }

    /// <summary>Connects to the socket at <paramref name="path"/> and hangs up: 0 when something answers, else the errno.</summary>
    private static int Probe(string path)
    {
        var address = RpcChannel.UnixAddress(path);
        int fd = Libc.socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) return Libc.LastError;
        try
        {
            while (true)
            {
                if (Libc.connect(fd, address, address.Length) == 0) return 0;
                int errno = Libc.LastError;
                if (errno != Libc.EINTR) return errno;
            }
        }
        finally
        {
            Libc.close(fd);
        }
    }

    /// <summary>Creates the missing directories of <paramref name="directory"/>, each with the access's mode and group.</summary>
    private static List<string> CreateDirectories(string directory, SocketAccess access)
    {
        var missing = new Stack<string>();
        for (string? d = directory; !string.IsNullOrEmpty(d); d = Path.GetDirectoryName(d))
        {
            var identity = Libc.LStat(d, out int errno);
            if (identity is { } found)
            {
                if (found.Type != FileIdentity.Directory)
                    throw new SocketPlaceException($"{d} is {found.TypeName}, not a directory; the socket {directory} cannot be made there");
                break;
            }
            if (errno != Libc.ENOENT)
                throw new SocketPlaceException($"cannot examine {d}: {Libc.Describe(errno)}");
            missing.Push(d);
        }
        var created = new List<string>();
        foreach (var d in missing)
        {
            if (Libc.mkdir(d, 0b111_000_000) != 0)
            {
                int errno = Libc.LastError;
                if (errno == Libc.EEXIST && Libc.LStat(d, out _) is { Type: FileIdentity.Directory }) continue; // made meanwhile
                throw new SocketPlaceException($"cannot create the directory {d}: {Libc.Describe(errno)}");
            }
            // mkdir's mode passes through the umask; the mode is set explicitly afterwards.
            if (access.Group is { } group && Libc.chown(d, uint.MaxValue, group) != 0)
                throw new SocketPlaceException($"cannot give the directory {d} to group {group}: {Libc.Describe(Libc.LastError)}");
            if (Libc.chmod(d, access.DirectoryMode) != 0)
                throw new SocketPlaceException($"cannot set the mode of {d}: {Libc.Describe(Libc.LastError)}");
            created.Add(d);
        }
        return created;
    }

    /// <summary>Gives the socket just bound its mode and group; returns its identity for <see cref="RemoveIfOwn"/>.</summary>
    public static FileIdentity Secure(string path, SocketAccess access)
    {
        if (access.Group is { } group && Libc.chown(path, uint.MaxValue, group) != 0)
            throw new SocketPlaceException($"cannot give the socket {path} to group {group}: {Libc.Describe(Libc.LastError)}");
        if (Libc.chmod(path, access.SocketMode) != 0)
            throw new SocketPlaceException($"cannot set the mode of the socket {path}: {Libc.Describe(Libc.LastError)}");
        return Libc.LStat(path, out int errno) ?? throw new SocketPlaceException($"cannot examine the socket {path}: {Libc.Describe(errno)}");
    }

    /// <summary>
    /// Removes the socket at <paramref name="path"/> if it is still the one that was bound
    /// (<paramref name="own"/>); another broker's socket put there since is left alone.
    /// Returns whether it removed it.
    /// </summary>
    public static bool RemoveIfOwn(string path, FileIdentity own)
    {
        if (Libc.LStat(path, out _) is not { } now || !now.SameFileAs(own))
            return false;
        return Libc.unlink(path) == 0;
    }

    /// <summary>
    /// Directories on the way to <paramref name="path"/> that an admitted uid or gid may not be
    /// able to search (the kernel refuses connect() before the broker can admit anyone): one line
    /// each, for a start-up warning. Group membership of a uid is not known here, so a directory
    /// searchable only through a group is reported for uids as "may not".
    /// </summary>
    public static List<string> Obstacles(string path, uint ownUid, IEnumerable<uint> allowedUids, IEnumerable<uint> allowedGids)
    {
        var problems = new List<string>();
        var uids = allowedUids.Where(uid => uid != ownUid && uid != 0).Distinct().ToArray();
        var gids = allowedGids.Distinct().ToArray();
        if (uids.Length == 0 && gids.Length == 0) return problems;
        for (string? d = Path.GetDirectoryName(Path.GetFullPath(path)); !string.IsNullOrEmpty(d); d = Path.GetDirectoryName(d))
        {
            if (Libc.LStat(d, out _) is not { } dir) continue;
            uint p = dir.Permissions;
            bool other = (p & 0b000_000_001) != 0;
            foreach (var uid in uids)
                if (!other && !(dir.Uid == uid && (p & 0b001_000_000) != 0))
                    problems.Add($"uid {uid} may not be able to reach the socket: {d} is mode {SocketAccess.Octal(p)}, owner {dir.Uid}, group {dir.Gid}");
            foreach (var gid in gids)
                if (!other && !(dir.Gid == gid && (p & 0b000_001_000) != 0))
                    problems.Add($"gid {gid} cannot reach the socket: {d} is mode {SocketAccess.Octal(p)}, owner {dir.Uid}, group {dir.Gid}");
        }
        return problems;
    }
}
