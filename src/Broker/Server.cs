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
        var client = new ClientState(name);
        Dispatcher? dispatcher = null;
        try
        {
            if (!channel.NegotiateAsServer(WireProfile.MaxVersion, out byte version))
                return;
            _log.Info($"{name} connected, protocol version {version}");
            dispatcher = new Dispatcher(_backend, _filter, client, _log, WireProfile.For(version));
            while (channel.TryReceiveFrame(out uint code, out var body))
            {
                if (!dispatcher.Handle(body, out var reply))
                    return;
                channel.SendFrame(code, reply);
            }
            _log.Info($"{name} disconnected");
        }
        catch (TransportException e)
        {
            _log.Warn($"{name}: {e.Message}; connection closed");
        }
        catch (Exception e)
        {
            _log.Error($"{name}: internal error {e.GetType().Name}: {e.Message}; connection closed");
        }
        finally
        {
            dispatcher?.CloseClientSessions();
            dispatcher?.Dispose();
            channel.Dispose();
        }
    }
}
