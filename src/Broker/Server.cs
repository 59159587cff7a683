using System.Runtime.InteropServices;
using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// Serves the backend to clients: many over a unix socket (a thread per connection, each with its
/// own view), or one over stdin/stdout. A client that sends garbage loses its own connection only.
/// </summary>
internal sealed partial class Server
{
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly BrokerLog _log;
    private readonly HashSet<uint> _allowedUids;
    private readonly HashSet<uint> _allowedGids;
    private int _connections;

    public Server(Backend backend, TokenFilter filter, BrokerLog log, IEnumerable<uint> allowedUids, IEnumerable<uint> allowedGids)
    {
        _backend = backend;
        _filter = filter;
        _log = log;
        _allowedUids = [getuid(), .. allowedUids];
        _allowedGids = [.. allowedGids];
    }

    [LibraryImport("libc")]
    private static partial uint getuid();

    public void ServeSocket(UnixListener listener)
    {
        while (true)
        {
            int fd = listener.Accept();
            if (fd < 0) return;
            var peer = UnixListener.PeerOf(fd);
            if (peer is not { } credentials || !(_allowedUids.Contains(credentials.Uid) || _allowedGids.Contains(credentials.Gid)))
            {
                _log.Warn(peer is { } p
                    ? $"refused a connection from uid {p.Uid} gid {p.Gid} pid {p.Pid}: not allowed (see --allow-uid/--allow-gid)"
                    : "refused a connection whose credentials could not be read");
                UnixListener.Close(fd);
                continue;
            }
            string name = $"client {Interlocked.Increment(ref _connections)} (uid {credentials.Uid}, pid {credentials.Pid})";
            var channel = new RpcChannel(fd, fd, isSocket: true);
            var thread = new Thread(() => Serve(channel, name)) { IsBackground = true, Name = name };
            thread.Start();
        }
    }

    public void ServeStdio()
    {
        // stdout carries the protocol: nothing else may ever be written to it.
        using var channel = new RpcChannel(0, 1, isSocket: false);
        Serve(channel, "stdio client");
    }

    private void Serve(RpcChannel channel, string name)
    {
        try
        {
            if (!channel.NegotiateAsServer(WireProfile.MaxVersion, out byte version))
            {
                channel.Dispose();
                return;
            }
            _log.Info($"{name} connected, protocol version {version}");
            new ClientConnection(channel, name, WireProfile.For(version), _backend, _filter, _log).Run();
        }
        catch (TransportException e)
        {
            _log.Warn($"{name}: {e.Message}; connection closed");
            channel.Dispose();
        }
    }
}

/// <summary>
/// One client's connection. Requests are answered concurrently and as they finish, tagged with
/// the caller's call code, so a slow signature does not hold up another thread's small call.
/// Workers take turns as the reader (leader/follower): the thread that receives a request
/// handles it itself, after letting the next worker read, so the common one-at-a-time case
/// costs no thread hand-off. Workers are added while all are busy, up to <see cref="MaxWorkers"/>.
/// </summary>
internal sealed class ClientConnection
{
    private const int MaxWorkers = 8;

    private readonly RpcChannel _channel;
    private readonly string _name;
    private readonly WireProfile _profile;
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly BrokerLog _log;
    private readonly ClientState _client;
    private readonly object _readLock = new();
    private readonly object _writeLock = new();
    private int _workers;
    private int _idle;
    private volatile bool _closing;

    public ClientConnection(RpcChannel channel, string name, WireProfile profile, Backend backend, TokenFilter filter, BrokerLog log)
    {
        _channel = channel;
        _name = name;
        _profile = profile;
        _backend = backend;
        _filter = filter;
        _log = log;
        _client = new ClientState(name);
    }

    /// <summary>Serves until the client leaves; the calling thread is the first worker.</summary>
    public void Run()
    {
        Interlocked.Increment(ref _workers);
        Interlocked.Increment(ref _idle);
        Work();
    }

    private void StartWorker()
    {
        Interlocked.Increment(ref _workers);
        Interlocked.Increment(ref _idle);
        new Thread(Work) { IsBackground = true, Name = _name }.Start();
    }

    private void Work()
    {
        var dispatcher = new Dispatcher(_backend, _filter, _client, _log, _profile);
        byte[] body = new byte[4096];
        try
        {
            while (!_closing)
            {
                uint code;
                int length;
                lock (_readLock)
                {
                    if (_closing) break;
                    if (!_channel.TryReceiveFrame(out code, out var frame))
                    {
                        _log.Info($"{_name} disconnected");
                        Close();
                        break;
                    }
                    if (body.Length < frame.Length)
                        body = new byte[Math.Max(frame.Length, body.Length * 2)];
                    frame.Span.CopyTo(body);
                    length = frame.Length;
                }
                if (Interlocked.Decrement(ref _idle) == 0 && Volatile.Read(ref _workers) < MaxWorkers)
                    StartWorker();
                try
                {
                    if (!dispatcher.Handle(new ReadOnlyMemory<byte>(body, 0, length), out var reply))
                    {
                        Close();
                        break;
                    }
                    lock (_writeLock)
                        _channel.SendFrame(code, reply);
                }
                finally
                {
                    Interlocked.Increment(ref _idle);
                    if (length > 0) Array.Clear(body, 0, length); // requests may carry PINs
                }
            }
        }
        catch (TransportException e)
        {
            if (!_closing) _log.Warn($"{_name}: {e.Message}; connection closed");
            Close();
        }
        catch (Exception e)
        {
            _log.Error($"{_name}: internal error {e.GetType().Name}: {e.Message}; connection closed");
            Close();
        }
        finally
        {
            dispatcher.Dispose();
            if (Interlocked.Decrement(ref _workers) == 0)
            {
                // The last worker out releases what the client left behind.
                var cleanup = new Dispatcher(_backend, _filter, _client, _log, _profile);
                cleanup.CloseClientSessions();
                cleanup.Dispose();
                _channel.Dispose();
            }
        }
    }

    /// <summary>Stops every worker: a reader blocked on the socket is woken by the shutdown.</summary>
    private void Close()
    {
        _closing = true;
        _channel.Shutdown();
    }
}
