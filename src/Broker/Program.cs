using System.Runtime.InteropServices;
using P11Proxy.Broker;
using P11Proxy.Wire.Transport;

// p11proxy-broker: serves a PKCS#11 module over p11-kit's RPC protocol, a module instance per client.
return BrokerMain.Run(args);

namespace P11Proxy.Broker
{
    internal static class BrokerMain
    {
        /// <summary>Rendered from man/reference.json at build time (see Broker.csproj).</summary>
        private const string Usage = BrokerOptions.Usage;

        /// <summary>Exit status for a mistake the user can fix: an option, or an unusable socket path.</summary>
        private const int UsageError = 2;

        public static int Run(string[] args)
        {
            if (args.Length == 0 || args[0] is "-h" or "--help")
            {
                // --help is asked for: standard output, so it can be paged; without arguments it is a mistake.
                (args.Length == 0 ? Console.Error : Console.Out).WriteLine(Usage);
                return args.Length == 0 ? UsageError : 0;
            }
            string mode = args[0];
            BrokerOptions options;
            try
            {
                if (mode != "worker" && !BrokerOptions.Modes.Contains(mode))
                    throw new BrokerException($"unknown mode '{mode}' (use {string.Join(" or ", BrokerOptions.Modes)})\n{Usage}");
                if (BrokerOptions.Parse(args) is not { } parsed)
                {
                    Console.Out.WriteLine(Usage); // serve --help and the like
                    return 0;
                }
                options = parsed;
                if (options.Module is null)
                    throw new BrokerException("--module PATH is required: the PKCS#11 module to serve, e.g. /usr/lib/softhsm/libsofthsm2.so");
                if (mode == "stdio" && options.ListenerOptionGiven is { } listenerOnly)
                    throw new BrokerException($"{listenerOnly} applies to 'serve' only");
                if (mode == "worker" && options.ListenerPid is null)
                    throw new BrokerException("the worker mode is started by 'p11proxy-broker serve' only");
                // --askpass-timeout-ms has a property of its own (one value, not a list); checked with the PIN lines.
                var heldPinOptions = new List<(string Option, string Value)>(options.HeldPins);
                if (options.AskpassTimeout is { } askpassTimeout) heldPinOptions.Add(("--askpass-timeout-ms", askpassTimeout));
                HeldPins.Configuration = HeldPinConfiguration.Parse(heldPinOptions);
                foreach (var uri in options.WaitForTokens) TokenWait.AddUri(uri); // --wait-for-token: checked as given
                if (options.TokenWaitMs is { } tokenWait) TokenWait.SetTimeout(tokenWait);
                HeldPins.Configuration.Check();
            }
            catch (BrokerException e)
            {
                // A mistyped option is the user's to fix: a message, not a stack trace.
                Console.Error.WriteLine($"p11proxy-broker: {e.Message}");
                return UsageError;
            }
            OutputBudget.Bytes = options.OutputMemory;
            Server.RequestBudget = new FrameBudget(options.RequestMemory);
            if (mode == "worker")
                return WorkerMain.Run(options.Module, options.Tokens, options.Verbose, options.ListenerPid!.Value, options.InitializeAhead, options.InitReserved);

            var log = new ProcessLog("p11proxy-broker", options.Verbose, quiet: mode == "stdio");
            try
            {
                var filter = TokenFilter.Parse(options.Tokens);
                if (mode == "stdio")
                {
                    // Before the module is loaded: its allocations from the start follow the same rule.
                    NativeHeap.KeepLargeBlocksOutOfThreadHeaps();
                    using var backend = Backend.Load(options.Module, options.InitReserved);
                    HeldPins.ArriveStdio(backend, log);
                    log.Info($"serving {options.Module}{(backend.Has30 ? " (PKCS#11 3.0 interface)" : "")}" +
                             (filter.FiltersAnything ? $", tokens matching {string.Join(" or ", filter.Descriptions)}" : ""));
                    new Server(backend, filter, log).ServeStdio();
                    return 0;
                }
                if (!File.Exists(options.Module))
                    throw new BrokerException($"module {options.Module} does not exist; pass the path of a PKCS#11 module with --module");
                return Serve(options, filter, log);
            }
            catch (SocketPlaceException e)
            {
                log.Error(e.Message);
                return UsageError;
            }
            catch (BrokerException e)
            {
                log.Error(e.Message);
                return 1;
            }
            catch (TransportException e)
            {
                log.Error(e.Message);
                return 1;
            }
        }

        private static int Serve(BrokerOptions options, TokenFilter filter, ProcessLog log)
        {
            var (limitBefore, limitAfter) = Posix.RaiseOpenFileLimit();
            uint ownUid = Libc.getuid();
            uint? socketGroup = null;
            if (options.SocketGroup is { } groupText)
                socketGroup = uint.TryParse(groupText, out var gid) ? gid
                    : Posix.GroupId(groupText) ?? throw new SocketPlaceException($"--socket-group: no group named '{groupText}'");
            var access = SocketAccess.For(ownUid, options.AllowedUids, options.AllowedGids, options.SocketMode, socketGroup);
            string socketPath = Path.GetFullPath(options.Socket ?? ServerAddress.DefaultSocketPath(ownUid));

            // The path first (a mistake there is reported before the module is loaded), then the
            // first worker (a module that cannot start is reported before the socket appears).
            var activated = UnixListener.FromSystemd(socketPath);
            if (activated is null)
            {
                var prepared = UnixSocketPlace.Prepare(socketPath, access);
                foreach (var directory in prepared.CreatedDirectories)
                    log.Info($"created {directory} (mode {SocketAccess.Octal(access.DirectoryMode)})");
                if (prepared.ReplacedStaleSocket)
                    log.Info($"replaced a stale socket at {socketPath} (nothing answered on it)");
            }
            var settings = new ListenerSettings
            {
                MaxClients = options.MaxClients,
                SpareWorkers = options.SpareWorkers,
                WorkerMemoryBytes = options.WorkerMemory,
                HandshakeTimeoutMilliseconds = options.HandshakeTimeout,
                OpenFileLimit = limitAfter,
                AllowedUids = [ownUid, .. options.AllowedUids],
                AllowedGids = [.. options.AllowedGids],
                WorkerOptions = options.ModuleOptions,
                InitializeAhead = options.InitializeAhead,
            };

            UnixListener? socket = activated;
            var listener = new Listener(settings, log);
            void Shutdown(PosixSignalContext context)
            {
                context.Cancel = true;
                listener.RequestStop(context.Signal.ToString());
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Shutdown);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Shutdown);

            log.Info($"serving {options.Module} with a worker process per client" +
                     (filter.FiltersAnything ? $", tokens matching {string.Join(" or ", filter.Descriptions)}" : "") +
                     $"; at most {settings.MaxClients} clients, {settings.SpareWorkers} spare worker{(settings.SpareWorkers == 1 ? "" : "s")}" +
                     (settings.InitializeAhead ? " (module initialised ahead)" : "") +
                     (settings.WorkerMemoryBytes > 0 ? $", {settings.WorkerMemoryBytes >> 20} MiB per worker" : ", no memory limit per worker") +
                     $", open-file limit {limitAfter}{(limitAfter != limitBefore ? $" (raised from {limitBefore})" : "")}");
            if (!HeldPins.Configuration.IsEmpty) log.Info(HeldPins.Configuration.Describe());
            if (!listener.StartFirstWorker())
                return 1;

            FileIdentity? own = null;
            if (activated is null)
            {
                socket = UnixListener.Listen(socketPath);
                try
                {
                    own = UnixSocketPlace.Secure(socketPath, access);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                log.Info($"listening on {socketPath}: {access.Description}");
            }
            else
            {
                log.Info($"listening on the socket systemd passed ({socketPath})");
            }
            foreach (var obstacle in UnixSocketPlace.Obstacles(socketPath, ownUid, options.AllowedUids, options.AllowedGids))
                log.Warn(obstacle);
            if (activated is null)
            {
                Console.Out.WriteLine($"P11_KIT_SERVER_ADDRESS={ServerAddress.ForUnixPath(socketPath)}; export P11_KIT_SERVER_ADDRESS;");
                Console.Out.WriteLine($"P11_KIT_SERVER_PID={Environment.ProcessId}; export P11_KIT_SERVER_PID;");
                Console.Out.Flush();
            }
            try
            {
                listener.Run(socket!);
            }
            finally
            {
                socket!.Dispose();
                // Only our own socket: if another broker took the path meanwhile, its socket stays.
                if (own is { } identity && !UnixSocketPlace.RemoveIfOwn(socketPath, identity))
                    log.Info($"left {socketPath} in place: it is no longer the socket this broker created");
            }
            return 0;
        }
    }
}
