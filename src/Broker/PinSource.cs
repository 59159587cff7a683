using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// A PIN in native memory that is never moved by the GC nor turned into a string: filled by
/// <see cref="PinSource.Read"/>, handed to the module's C_Login, wiped and freed on dispose.
/// Locked into RAM where the system allows it (mlock), so it does not reach swap.
/// </summary>
internal sealed unsafe class PinBuffer : IDisposable
{
    /// <summary>Room for one PIN line: PKCS#11 tokens take PINs of at most a few dozen bytes.</summary>
    public const int Capacity = 256;

    private byte* _bytes = (byte*)NativeMemory.AllocZeroed(Capacity);

    public PinBuffer() => PinNative.mlock(_bytes, Capacity);

    public byte* Bytes => _bytes;
    public int Length { get; set; }

    public Span<byte> Room => new(_bytes, Capacity);

    public void Dispose()
    {
        if (_bytes == null) return;
        CryptographicOperations.ZeroMemory(new Span<byte>(_bytes, Capacity));
        PinNative.munlock(_bytes, Capacity);
        NativeMemory.Free(_bytes);
        _bytes = null;
        Length = 0;
    }
}

/// <summary>Why a held PIN could not be had: a CK_RV for the client and a line for the log (never the PIN).</summary>
internal sealed class PinUnavailableException(ulong rv, string message) : Exception(message)
{
    public ulong ReturnValue { get; } = rv;
}

/// <summary>
/// Where the broker gets a token's PIN (the pin-source of a --pin URI): <c>file:/abs/path</c>,
/// <c>credential:NAME</c> ($CREDENTIALS_DIRECTORY/NAME, systemd's LoadCredential[Encrypted]=) or
/// <c>|PROGRAM [ARGS]</c> (an ask-pass program; the PIN is the first line of its standard output).
/// The PIN is read each time it is needed, into a <see cref="PinBuffer"/>, and wiped after the
/// login: nothing holds it between logins.
/// </summary>
internal abstract class PinSource
{
    /// <summary>How the source is named in log lines and errors (never the PIN).</summary>
    public abstract string Description { get; }

    /// <summary>Start-up checks: throws <see cref="BrokerException"/> saying what is wrong and what to do.</summary>
    public abstract void Check();

    /// <summary>
    /// The PIN, first line only, without its line end. Throws <see cref="PinUnavailableException"/>.
    /// <paramref name="cancelFd"/> (an eventfd) ends an ask-pass program early.
    /// </summary>
    public abstract PinBuffer Read(int timeoutMilliseconds, int cancelFd);

    /// <summary>Parses a pin-source value (already taken out of the URI's query, percent-decoding not yet applied).</summary>
    public static PinSource Parse(string value, string option)
    {
        if (value.StartsWith('|'))
        {
            // Decoded first (a URI has no raw spaces: %20 separates), then split as a shell would,
            // with '...', "..." and backslash quoting, as p11-kit splits a '|command' address.
            var words = SplitCommand(Decode(value[1..], option), option);
            if (words.Length == 0)
                throw new BrokerException($"{option}: pin-source '|' names no program (write e.g. pin-source=|/bin/systemd-ask-password%20'PIN%20for%20the%20token')");
            return new ProgramPinSource(words);
        }
        string decoded = Decode(value, option);
        if (decoded.StartsWith("file:", StringComparison.Ordinal))
        {
            string path = decoded["file:".Length..];
            if (path.StartsWith("//", StringComparison.Ordinal)) path = path[2..]; // file:///abs
            if (!path.StartsWith('/'))
                throw new BrokerException($"{option}: pin-source file:{path} is not an absolute path (write file:/etc/p11proxy/token.pin)");
            return new FilePinSource(path);
        }
        if (decoded.StartsWith("credential:", StringComparison.Ordinal))
        {
            string name = decoded["credential:".Length..];
            if (name.Length == 0 || name.Contains('/') || name is "." or "..")
                throw new BrokerException($"{option}: pin-source credential:{name} is not a credential name (a file name under $CREDENTIALS_DIRECTORY, as in the unit's LoadCredentialEncrypted=NAME:...)");
            return new CredentialPinSource(name);
        }
        throw new BrokerException($"{option}: pin-source '{decoded}' is not file:/PATH, credential:NAME or |PROGRAM [ARGS]");
    }

    /// <summary>Splits a command line at unquoted white space; '...' is literal, "..." and a backslash quote.</summary>
    internal static string[] SplitCommand(string text, string option)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        bool inWord = false;
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quote == '\'')
            {
                if (c == '\'') quote = '\0'; else word.Append(c);
                continue;
            }
            if (c == '\\')
            {
                if (++i >= text.Length) throw new BrokerException($"{option}: the ask-pass command ends with a lone backslash");
                word.Append(text[i]);
                inWord = true;
                continue;
            }
            if (quote == '"')
            {
                if (c == '"') quote = '\0'; else word.Append(c);
                continue;
            }
            if (c is '\'' or '"')
            {
                quote = c;
                inWord = true;
            }
            else if (char.IsWhiteSpace(c))
            {
                if (inWord) words.Add(word.ToString());
                word.Clear();
                inWord = false;
            }
            else
            {
                word.Append(c);
                inWord = true;
            }
        }
        if (quote != '\0') throw new BrokerException($"{option}: the ask-pass command has an unclosed {quote} quote");
        if (inWord) words.Add(word.ToString());
        return words.ToArray();
    }

    internal static string Decode(string value, string option)
    {
        var utf8 = Encoding.UTF8.GetBytes(value);
        var bytes = new List<byte>(utf8.Length);
        for (int i = 0; i < utf8.Length; i++)
        {
            if (utf8[i] != '%')
            {
                bytes.Add(utf8[i]);
                continue;
            }
            if (i + 2 >= utf8.Length || !byte.TryParse(Encoding.ASCII.GetString(utf8, i + 1, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                throw new BrokerException($"{option}: bad percent-encoding in '{value}'");
            bytes.Add(b);
            i += 2;
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <summary>The first line of what <paramref name="pin"/> holds: its length without the line end, or -1 if there is no end within the buffer.</summary>
    internal static int FirstLine(ReadOnlySpan<byte> data, bool complete)
    {
        int end = data.IndexOf((byte)'\n');
        if (end < 0)
        {
            if (!complete) return -1;
            end = data.Length;
        }
        if (end > 0 && data[end - 1] == '\r') end--;
        return end;
    }
}

/// <summary>A file that only the broker's user may read: owned by it, no access for group or others.</summary>
internal class FilePinSource(string path) : PinSource
{
    public string Path { get; } = path;

    public override string Description => $"file:{Path}";

    /// <summary>What to call the file in a refusal.</summary>
    protected virtual string What => $"PIN file {Path}";

    public override void Check()
    {
        var status = PinNative.Status(Path, out int errno);
        if (status is null)
            throw new BrokerException($"{What}: {Posix.Describe(errno)}; create it holding the PIN on its first line, owned by the broker's user with mode 0600 (or 0400)");
        CheckStatus(status.Value);
    }

    private void CheckStatus(PinNative.FileStatus status)
    {
        uint uid = PinNative.geteuid();
        if (!status.IsRegular)
            throw new BrokerException($"{What} is not a regular file (a symbolic link is not followed); the PIN must be in a plain file owned by the broker's user with mode 0600");
        if (status.Uid != uid)
            throw new BrokerException($"{What} is owned by uid {status.Uid}, not by the broker's user (uid {uid}): another user could change the PIN the broker logs in with; 'chown {uid} {Path}'");
        if ((status.Mode & 0x3F) != 0)
            throw new BrokerException($"{What} has mode {Convert.ToString(status.Mode & 0xFFF, 8).PadLeft(4, '0')}: readable or writable by group or others, who could read the PIN; 'chmod 600 {Path}'");
    }

    public override unsafe PinBuffer Read(int timeoutMilliseconds, int cancelFd)
    {
        int fd = PinNative.OpenForReading(Path);
        if (fd < 0)
            throw new PinUnavailableException(CKR_DEVICE_ERROR, $"cannot open {What}: {Posix.Describe(Posix.LastError)}");
        var pin = new PinBuffer();
        try
        {
            // The checks again, on the file actually opened: it may have changed since start-up.
            var status = PinNative.Status(fd);
            if (status is null) throw new PinUnavailableException(CKR_DEVICE_ERROR, $"cannot read {What}");
            try { CheckStatus(status.Value); }
            catch (BrokerException e) { throw new PinUnavailableException(CKR_DEVICE_ERROR, e.Message); }
            int total = 0;
            while (total < PinBuffer.Capacity)
            {
                nint got = PinNative.read(fd, pin.Bytes + total, PinBuffer.Capacity - total);
                if (got < 0 && Posix.LastError == Posix.EINTR) continue;
                if (got < 0) throw new PinUnavailableException(CKR_DEVICE_ERROR, $"cannot read {What}: {Posix.Describe(Posix.LastError)}");
                if (got == 0) break;
                total += (int)got;
                if (FirstLine(pin.Room[..total], complete: false) >= 0) break;
            }
            int length = FirstLine(pin.Room[..total], complete: total < PinBuffer.Capacity);
            if (length < 0) throw new PinUnavailableException(CKR_DEVICE_ERROR, $"{What}: its first line is longer than {PinBuffer.Capacity - 1} bytes, no PIN is that long");
            if (length == 0) throw new PinUnavailableException(CKR_DEVICE_ERROR, $"{What} is empty: put the PIN on its first line");
            CryptographicOperations.ZeroMemory(pin.Room[length..]);
            pin.Length = length;
            return pin;
        }
        catch
        {
            pin.Dispose();
            throw;
        }
        finally
        {
            Posix.close(fd);
        }
    }
}

/// <summary>A systemd credential: $CREDENTIALS_DIRECTORY/NAME (LoadCredential= or LoadCredentialEncrypted=).</summary>
internal sealed class CredentialPinSource(string name) : FilePinSource(System.IO.Path.Combine(Environment.GetEnvironmentVariable("CREDENTIALS_DIRECTORY") ?? "", name))
{
    public string Name { get; } = name;

    public override string Description => $"credential:{Name}";

    protected override string What => $"credential {Name} ({Path})";

    public override void Check()
    {
        string? directory = Environment.GetEnvironmentVariable("CREDENTIALS_DIRECTORY");
        if (string.IsNullOrEmpty(directory))
            throw new BrokerException($"pin-source credential:{Name}: $CREDENTIALS_DIRECTORY is not set: run the broker as a systemd service with 'LoadCredentialEncrypted={Name}:/etc/credstore.encrypted/{Name}' (or LoadCredential=), or use pin-source=file:/PATH");
        if (!File.Exists(Path))
            throw new BrokerException($"pin-source credential:{Name}: no file {Path}: the unit passes no credential named '{Name}'; add 'LoadCredentialEncrypted={Name}:...' to it (see 'systemd-creds encrypt')");
        base.Check();
    }
}

/// <summary>
/// An ask-pass program run by the broker for each login that needs the PIN (systemd-ask-password,
/// an SSH_ASKPASS-style program): the PIN is the first line of its standard output. It runs in a
/// process group of its own, so a timeout or a cancellation (the client's C_Finalize or
/// disconnection) ends it and whatever it started.
/// </summary>
internal sealed class ProgramPinSource : PinSource
{
    public ProgramPinSource(string[] argv)
    {
        Argv = argv;
    }

    public string[] Argv { get; private set; }

    public override string Description => $"ask-pass program {Argv[0]}";

    public override void Check()
    {
        string program = Argv[0];
        string? found = program.Contains('/')
            ? program
            : (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
                .Select(d => System.IO.Path.Combine(d, program)).FirstOrDefault(File.Exists);
        if (found is null || !File.Exists(found))
            throw new BrokerException($"ask-pass program '{program}' not found{(program.Contains('/') ? "" : " in $PATH")}; give its absolute path in pin-source=|/PATH");
        if (!System.IO.Path.IsPathRooted(found))
            found = System.IO.Path.GetFullPath(found);
        if (PinNative.Status(found, out _, followLinks: true) is not { } status || (status.Mode & 0x49) == 0) // no x bit for anyone
            throw new BrokerException($"ask-pass program {found} is not executable; 'chmod +x {found}'");
        Argv = [found, .. Argv[1..]];
    }

    public override unsafe PinBuffer Read(int timeoutMilliseconds, int cancelFd)
    {
        var pin = new PinBuffer();
        int pid = -1, readFd = -1;
        try
        {
            (pid, readFd) = PinNative.SpawnWithOutputPipe(Argv);
            long deadline = Environment.TickCount64 + timeoutMilliseconds;
            int total = 0;
            bool complete = false;
            Span<Posix.PollFd> fds = stackalloc Posix.PollFd[2];
            while (true)
            {
                int remaining = (int)Math.Max(0, deadline - Environment.TickCount64);
                fds[0] = new() { Fd = readFd, Events = Posix.POLLIN };
                fds[1] = new() { Fd = cancelFd, Events = Posix.POLLIN };
                int ready = Posix.poll(fds, cancelFd >= 0 ? 2u : 1u, remaining);
                if (ready < 0 && Posix.LastError == Posix.EINTR) continue;
                if (cancelFd >= 0 && fds[1].Revents != 0)
                    throw new PinUnavailableException(CKR_FUNCTION_CANCELED, $"{Description} stopped: its client finalised or left");
                if (ready == 0)
                    throw new PinUnavailableException(CKR_FUNCTION_CANCELED, $"{Description} gave no PIN within {timeoutMilliseconds} ms (--askpass-timeout-ms); stopped it");
                nint got = PinNative.read(readFd, pin.Bytes + total, PinBuffer.Capacity - total);
                if (got < 0 && Posix.LastError is Posix.EINTR or Posix.EAGAIN) continue;
                if (got <= 0) { complete = true; break; }
                total += (int)got;
                if (PinSource.FirstLine(pin.Room[..total], complete: false) >= 0 || total == PinBuffer.Capacity) break;
            }
            int length = FirstLine(pin.Room[..total], complete: complete);
            Posix.close(readFd);
            readFd = -1;
            int status = PinNative.WaitExit(pid, Math.Max(0, (int)(deadline - Environment.TickCount64)), cancelFd);
            pid = -1;
            if (status != 0)
                throw new PinUnavailableException(CKR_FUNCTION_CANCELED, $"{Description} {(status > 0 ? $"exited with status {status}" : "did not finish")}: the PIN was not given (cancelled)");
            if (length < 0)
                throw new PinUnavailableException(CKR_DEVICE_ERROR, $"{Description}: its first line is longer than {PinBuffer.Capacity - 1} bytes, no PIN is that long");
            if (length == 0)
                throw new PinUnavailableException(CKR_FUNCTION_CANCELED, $"{Description} printed an empty line: no PIN given");
            CryptographicOperations.ZeroMemory(pin.Room[length..]);
            pin.Length = length;
            return pin;
        }
        catch
        {
            pin.Dispose();
            throw;
        }
        finally
        {
            if (readFd >= 0) Posix.close(readFd);
            if (pid > 0) PinNative.KillGroup(pid);
        }
    }
}

/// <summary>The few system calls the PIN sources need, with their pointers.</summary>
internal static unsafe partial class PinNative
{
    [LibraryImport("libc", SetLastError = true)]
    public static partial int mlock(void* address, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int munlock(void* address, nuint length);

    [LibraryImport("libc")]
    public static partial uint geteuid();

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, void* buffer, nint count);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirFd, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int waitpid(int pid, out int status, int options);

    [LibraryImport("libc")]
    private static partial int posix_spawn(out int pid, byte* path, nint actions, nint attributes, byte** argv, byte** envp);

    [LibraryImport("libc")]
    private static partial int posix_spawn_file_actions_init(nint actions);

    [LibraryImport("libc")]
    private static partial int posix_spawn_file_actions_adddup2(nint actions, int fd, int newFd);

    [LibraryImport("libc")]
    private static partial int posix_spawn_file_actions_addopen(nint actions, int fd, byte* path, int flags, uint mode);

    [LibraryImport("libc")]
    private static partial int posix_spawn_file_actions_destroy(nint actions);

    [LibraryImport("libc")]
    private static partial int posix_spawnattr_init(nint attributes);

    [LibraryImport("libc")]
    private static partial int posix_spawnattr_setflags(nint attributes, short flags);

    [LibraryImport("libc")]
    private static partial int posix_spawnattr_setpgroup(nint attributes, int group);

    [LibraryImport("libc")]
    private static partial int posix_spawnattr_setsigmask(nint attributes, nint mask);

    [LibraryImport("libc")]
    private static partial int posix_spawnattr_destroy(nint attributes);

    [LibraryImport("libc")]
    private static partial int sigemptyset(nint set);

    private const int O_RDONLY = 0, O_NOFOLLOW = 0x20000, O_CLOEXEC = 0x80000, O_NONBLOCK = 0x800;
    private const int AT_FDCWD = -100, AT_EMPTY_PATH = 0x1000, AT_SYMLINK_NOFOLLOW = 0x100;
    private const uint STATX_BASIC_STATS = 0x7ff;

    public readonly record struct FileStatus(uint Uid, uint Mode)
    {
        public bool IsRegular => (Mode & 0xF000) == 0x8000;
    }

    /// <summary>Opens a file for reading without following a final symbolic link; -1 with errno.</summary>
    public static int OpenForReading(string path) => open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    /// <summary>Owner and mode of a path (unless <paramref name="followLinks"/>, of a symbolic link itself), or null with the errno.</summary>
    public static FileStatus? Status(string path, out int errno, bool followLinks = false)
    {
        errno = 0;
        var status = StatusOf(AT_FDCWD, path, followLinks ? 0 : AT_SYMLINK_NOFOLLOW);
        if (status is null) errno = Posix.LastError;
        return status;
    }

    /// <summary>Owner and mode of an open file, or null.</summary>
    public static FileStatus? Status(int fd) => StatusOf(fd, "", AT_EMPTY_PATH);

    private static FileStatus? StatusOf(int dirFd, string path, int flags)
    {
        // struct statx has one layout on every architecture: stx_uid at 20, stx_mode (u16) at 28.
        byte* buffer = stackalloc byte[256];
        if (statx(dirFd, path, flags, STATX_BASIC_STATS, buffer) != 0) return null;
        return new FileStatus(*(uint*)(buffer + 20), *(ushort*)(buffer + 28));
    }

    private static readonly nint Environ = NativeLibrary.TryGetExport(NativeLibrary.Load("libc.so.6"), "environ", out var address) ? address : 0;

    /// <summary>
    /// Starts <paramref name="argv"/> (argv[0] an absolute path) in a new process group with stdin
    /// on /dev/null, stdout on a pipe whose read end (non-blocking, close-on-exec) is returned,
    /// stderr shared (its prompts and complaints join the broker's log) and this process's environment.
    /// </summary>
    public static (int Pid, int ReadFd) SpawnWithOutputPipe(string[] argv)
    {
        int* fds = stackalloc int[2];
        if (pipe2(fds, O_CLOEXEC) != 0)
            throw new PinUnavailableException(CKR_DEVICE_ERROR, $"cannot create a pipe for the ask-pass program: {Posix.Describe(Posix.LastError)}");
        var strings = new List<nint>();
        byte* Utf8(string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text + "\0");
            var p = (byte*)NativeMemory.Alloc((nuint)bytes.Length);
            bytes.CopyTo(new Span<byte>(p, bytes.Length));
            strings.Add((nint)p);
            return p;
        }
        byte** args = (byte**)NativeMemory.AllocZeroed((nuint)((argv.Length + 1) * sizeof(nint)));
        nint actions = (nint)NativeMemory.AllocZeroed(256);
        nint attributes = (nint)NativeMemory.AllocZeroed(512);
        nint mask = (nint)NativeMemory.AllocZeroed(128);
        try
        {
            for (int i = 0; i < argv.Length; i++) args[i] = Utf8(argv[i]);
            posix_spawn_file_actions_init(actions);
            posix_spawn_file_actions_addopen(actions, 0, Utf8("/dev/null"), O_RDONLY, 0);
            posix_spawn_file_actions_adddup2(actions, fds[1], 1);
            posix_spawnattr_init(attributes);
            sigemptyset(mask);
            posix_spawnattr_setsigmask(attributes, mask);
            posix_spawnattr_setpgroup(attributes, 0);
            const short POSIX_SPAWN_SETPGROUP = 0x02, POSIX_SPAWN_SETSIGMASK = 0x08;
            posix_spawnattr_setflags(attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
            byte** envp = Environ != 0 ? *(byte***)Environ : null;
            int rc = posix_spawn(out int pid, args[0], actions, attributes, args, envp);
            Posix.close(fds[1]);
            if (rc != 0)
            {
                Posix.close(fds[0]);
                throw new PinUnavailableException(CKR_DEVICE_ERROR, $"cannot start the ask-pass program {argv[0]}: {Posix.Describe(rc)}");
            }
            Posix.fcntl(fds[0], Posix.F_SETFL, Posix.fcntl(fds[0], Posix.F_GETFL, 0) | O_NONBLOCK);
            return (pid, fds[0]);
        }
        finally
        {
            posix_spawn_file_actions_destroy(actions);
            posix_spawnattr_destroy(attributes);
            NativeMemory.Free((void*)actions);
            NativeMemory.Free((void*)attributes);
            NativeMemory.Free((void*)mask);
            foreach (var p in strings) NativeMemory.Free((void*)p);
            NativeMemory.Free(args);
        }
    }

    /// <summary>Waits for the program's exit status, at most <paramref name="timeoutMilliseconds"/> or until cancelled; -1 (and its group killed) otherwise.</summary>
    public static int WaitExit(int pid, int timeoutMilliseconds, int cancelFd)
    {
        long deadline = Environment.TickCount64 + timeoutMilliseconds;
        while (true)
        {
            int result = waitpid(pid, out int status, 1 /* WNOHANG */);
            if (result == pid)
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
            if (result < 0 && Posix.LastError != Posix.EINTR) return -1;
            if (Environment.TickCount64 >= deadline || (cancelFd >= 0 && IsSignalled(cancelFd)))
            {
                KillGroup(pid);
                return -1;
            }
            Thread.Sleep(10);
        }
    }

    private static bool IsSignalled(int fd)
    {
        Span<Posix.PollFd> fds = stackalloc Posix.PollFd[1];
        fds[0] = new() { Fd = fd, Events = Posix.POLLIN };
        return Posix.poll(fds, 1, 0) > 0;
    }

    /// <summary>Ends the program and anything it started (its process group), and reaps it.</summary>
    public static void KillGroup(int pid)
    {
        Posix.kill(-pid, Posix.SIGKILL);
        Posix.kill(pid, Posix.SIGKILL);
        while (waitpid(pid, out _, 0) < 0 && Posix.LastError == Posix.EINTR) { }
    }
}
