using System.Runtime.InteropServices;
using System.Text;
using static P11Proxy.Platform.Libc;

namespace P11Proxy.Wire.Transport;

/// <summary>
/// A child process speaking the protocol on its stdin/stdout (p11-kit's "|command args" address).
/// Started with posix_spawnp straight from the arguments (no shell in between, as p11-kit execs
/// them), so no managed code ever runs in a forked copy of the host and no thread is created; the
/// pipes on our side are close-on-exec. At disposal the child's stdin is closed (it exits on EOF)
/// and the child is reaped as soon as it exits, without a fixed sleep.
/// </summary>
public sealed class SpawnedProcess : IDisposable
{
    private int _pid;

    private SpawnedProcess(int pid, RpcChannel channel)
    {
        _pid = pid;
        Channel = channel;
    }

    public RpcChannel Channel { get; }
    public int Pid => _pid;

    /// <summary>
    /// Starts the program <c>arguments[0]</c> (looked up on PATH) with its stdin and stdout connected
    /// to a new channel. A program that cannot be started is reported here, with the reason.
    /// </summary>
    public static unsafe SpawnedProcess Start(IReadOnlyList<string> arguments, FrameLimits? limits = null)
    {
        if (arguments.Count == 0)
            throw new ArgumentException("a command needs at least the program", nameof(arguments));
        Span<int> toChild = stackalloc int[2];
        Span<int> fromChild = stackalloc int[2];
        if (pipe2(toChild, O_CLOEXEC) != 0)
            throw new TransportException($"cannot create a pipe: {Libc.Describe(Libc.LastError)}");
        if (pipe2(fromChild, O_CLOEXEC) != 0)
        {
            int errno = Libc.LastError;
            Libc.close(toChild[0]);
            Libc.close(toChild[1]);
            throw new TransportException($"cannot create a pipe: {Libc.Describe(errno)}");
        }

        // glibc's posix_spawn_file_actions_t is 80 bytes; leave generous room.
        nint actions = (nint)NativeMemory.AllocZeroed(256);
        var strings = new List<nint>();
        try
        {
            posix_spawn_file_actions_init(actions);
            // dup2 onto 0 and 1 clears close-on-exec for those two only.
            posix_spawn_file_actions_adddup2(actions, toChild[0], 0);
            posix_spawn_file_actions_adddup2(actions, fromChild[1], 1);

            nint Utf8(string text)
            {
                var bytes = Encoding.UTF8.GetBytes(text + "\0");
                nint p = (nint)NativeMemory.Alloc((nuint)bytes.Length);
                bytes.CopyTo(new Span<byte>((void*)p, bytes.Length));
                strings.Add(p);
                return p;
            }
            var argv = (nint*)NativeMemory.AllocZeroed((nuint)((arguments.Count + 1) * sizeof(nint)));
            strings.Add((nint)argv);
            for (int i = 0; i < arguments.Count; i++)
                argv[i] = Utf8(arguments[i]);

            // glibc reports a failed exec (no such program, not executable) as the result here.
            int rc = posix_spawnp(out int pid, argv[0], actions, 0, (nint)argv, Environ());
            Libc.close(toChild[0]);
            Libc.close(fromChild[1]);
            if (rc != 0)
            {
                Libc.close(toChild[1]);
                Libc.close(fromChild[0]);
                throw new TransportException($"cannot start '{arguments[0]}': {Libc.Describe(rc)}");
            }
            return new SpawnedProcess(pid, new RpcChannel(fromChild[0], toChild[1], isSocket: false, limits));
        }
        finally
        {
            posix_spawn_file_actions_destroy(actions);
            NativeMemory.Free((void*)actions);
            foreach (var p in strings)
                NativeMemory.Free((void*)p);
        }
    }

    /// <summary>
    /// The current environment block (the host's, including variables it set with setenv). Looked
    /// up in the global scope: a host that declares environ itself has the live copy, and libc's
    /// own symbol would then be a stale, empty one.
    /// </summary>
    private static unsafe nint Environ()
    {
        if (!NativeLibrary.TryGetExport(NativeLibrary.GetMainProgramHandle(), "environ", out var address))
            address = NativeLibrary.GetExport(NativeLibrary.Load("libc.so.6"), "environ");
        return *(nint*)address;
    }

    /// <summary>Makes a thread blocked reading from the child fail: the child is asked to stop.</summary>
    public void Shutdown()
    {
        if (_pid > 0) kill(_pid, SIGTERM);
    }

    /// <summary>Whether the child has exited (reaping it if so).</summary>
    public bool HasExited()
    {
        if (_pid <= 0) return true;
        int result = waitpid(_pid, out _, WNOHANG);
        if (result == _pid || result < 0)
        {
            _pid = 0;
            return true;
        }
        return false;
    }

    public void Dispose()
    {
        // Closing our ends gives the child EOF on stdin; a well-behaved server exits at once.
        Channel.Dispose();
        if (_pid <= 0) return;
        if (WaitForExit(2000)) return;
        kill(_pid, SIGTERM);
        if (WaitForExit(500)) return;
        kill(_pid, SIGKILL);
        waitpid(_pid, out _, 0);
        _pid = 0;
    }

    /// <summary>
    /// Waits up to the given time for the child to exit and reaps it. A pidfd wakes us the moment it
    /// exits (C_Finalize of a spawned broker costs its exit, not a polling interval); kernels
    /// without pidfd_open (before 5.3) are polled every millisecond.
    /// </summary>
    private bool WaitForExit(int milliseconds)
    {
        if (HasExited()) return true;
        int pidfd = (int)syscall(SYS_pidfd_open, _pid, 0);
        if (pidfd >= 0)
        {
            try
            {
                Span<PollFd> entry = [new PollFd { Fd = pidfd, Events = POLLIN /* exited */ }];
                long deadline = Environment.TickCount64 + milliseconds;
                while (true)
                {
                    int left = (int)Math.Max(0, deadline - Environment.TickCount64);
                    int ready = poll(entry, 1, left);
                    if (HasExited()) return true;
                    if (ready == 0 || left == 0) return false; // timed out
                    // interrupted by a signal, or readable but not yet reapable: look again
                }
            }
            finally
            {
                Libc.close(pidfd);
            }
        }
        for (int waited = 0; waited < milliseconds; waited++)
        {
            Thread.Sleep(1);
            if (HasExited()) return true;
        }
        return false;
    }
}
