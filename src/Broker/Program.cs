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
        private const string Usage = BrokerUsage.Text;

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
            Options options;
            try
            {
                if (mode is not ("serve" or "stdio" or "worker"))
                    throw new BrokerException($"unknown mode '{mode}' (use serve or stdio)\n{Usage}");
                options = Options.Parse(args);
                if (options.Module is null)
                    throw new BrokerException("--module PATH is required: the PKCS#11 module to serve, e.g. /usr/lib/softhsm/libsofthsm2.so");
                if (mode == "stdio" && options.ListenerOptionGiven is { } listenerOnly)
                    throw new BrokerException($"{listenerOnly} applies to 'serve' only");
                if (mode == "worker" && options.ListenerPid is null)
                    throw new BrokerException("the worker mode is started by 'p11proxy-broker serve' only");
                HeldPins.Configuration = HeldPinConfiguration.Parse(options.HeldPins);
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

            var log = new BrokerLog(options.Verbose, quiet: mode == "stdio");
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

        /// <summary>The command line after the mode.</summary>
        private sealed class Options
        {
            public string? Module { get; private set; }
            public string? Socket { get; private set; }
            public string? InitReserved { get; private set; }
            public bool Verbose { get; private set; }
            public List<string> Tokens { get; } = new();
            public List<uint> AllowedUids { get; } = new();
            public List<uint> AllowedGids { get; } = new();
            public long OutputMemory { get; private set; } = OutputBudget.DefaultBytes;
            public long RequestMemory { get; private set; } = Server.DefaultRequestMemory;
            public int MaxClients { get; private set; } = 256;
            public int SpareWorkers { get; private set; } = 1;
            public long WorkerMemory { get; private set; }
            public int HandshakeTimeout { get; private set; } = 5000;
            public uint? SocketMode { get; private set; }
            public string? SocketGroup { get; private set; }
            public int? ListenerPid { get; private set; }
            public bool InitializeAhead { get; private set; }
            public List<(string Option, string Value)> HeldPins { get; } = new();

            /// <summary>The first option given that only the listener of 'serve' understands, if any.</summary>
            public string? ListenerOptionGiven { get; private set; }

            /// <summary>
            /// Every option that is not the listener's, as given: the options a worker is started
            /// with (the module and how to serve it), so an option added for the module side
            /// reaches the workers without anything else to change.
            /// </summary>
            public List<string> ModuleOptions { get; } = new();

            private static readonly HashSet<string> ListenerOnly =
            [
                "--socket", "--allow-uid", "--allow-gid", "--socket-mode", "--socket-group", "--max-clients",
                "--spare-workers", "--worker-memory-mib", "--handshake-timeout-ms", "--initialize-ahead",
            ];

            /// <summary>Throws <see cref="BrokerException"/> naming the option that is wrong.</summary>
            public static Options Parse(string[] args)
            {
                var options = new Options();
                for (int i = 1; i < args.Length; i++)
                {
                    int first = i;
                    string Next() => i + 1 < args.Length ? args[++i] : throw new BrokerException($"{args[i]} needs a value\n{Usage}");
                    switch (args[i])
                    {
                        case "--module": options.Module = Next(); break;
                        case "--socket": options.Socket = Next(); break;
                        case "--init-reserved": options.InitReserved = Next(); break;
                        case "--token": options.Tokens.Add(Next()); break;
                        case "--wait-for-token": TokenWait.AddUri(Next()); break;
                        case "--token-wait-ms": TokenWait.SetTimeout(Next()); break;
                        case "--allow-uid": options.AllowedUids.Add(ParseId(Next(), "--allow-uid")); break;
                        case "--allow-gid": options.AllowedGids.Add(ParseId(Next(), "--allow-gid")); break;
                        case "--socket-mode":
                            options.SocketMode = SocketAccess.TryParseMode(Next(), out uint socketMode) && (socketMode & 0b110_000_000) == 0b110_000_000
                                ? socketMode
                                : throw new BrokerException($"--socket-mode takes an octal mode such as 0660 that leaves the owner read and write, not '{args[i]}'");
                            break;
                        case "--socket-group": options.SocketGroup = Next(); break;
                        case "--max-clients": options.MaxClients = ParseCount(Next(), "--max-clients", 1, 65536); break;
                        case "--spare-workers": options.SpareWorkers = ParseCount(Next(), "--spare-workers", 0, 64); break;
                        case "--worker-memory-mib": options.WorkerMemory = ParseMebibytes(Next(), "--worker-memory-mib", minimum: 16); break;
                        case "--handshake-timeout-ms": options.HandshakeTimeout = ParseCount(Next(), "--handshake-timeout-ms", 100, 600_000); break;
                        case "--output-memory-mib": options.OutputMemory = ParseMebibytes(Next(), "--output-memory-mib"); break;
                        case "--request-memory-mib": options.RequestMemory = ParseMebibytes(Next(), "--request-memory-mib"); break;
                        case "--verbose": case "-v": options.Verbose = true; break;
                        case "--initialize-ahead": options.InitializeAhead = true; break;
                        case "--pin" or "--protected-login" or "--login-on-arrival" or "--askpass-timeout-ms": options.HeldPins.Add((args[i], Next())); break;
                        case "--listener-pid": options.ListenerPid = ParseCount(Next(), "--listener-pid", 1, int.MaxValue); break;
                        default: throw new BrokerException($"unknown option '{args[i]}'\n{Usage}");
                    }
                    if (ListenerOnly.Contains(args[first]))
                        options.ListenerOptionGiven ??= args[first];
                    else if (args[first] != "--listener-pid")
                        options.ModuleOptions.AddRange(args[first..(i + 1)]);
                }
                return options;
            }

            /// <summary>1 MiB to 64 GiB: a budget of 0 would refuse every large output, which no one means.</summary>
            private static long ParseMebibytes(string text, string option, int minimum = 1) =>
                long.TryParse(text, out var mib) && mib >= minimum && mib <= 65536
                    ? mib << 20
                    : throw new BrokerException($"{option} takes a number of MiB from {minimum} to 65536, not '{text}'");

            private static int ParseCount(string text, string option, int minimum, int maximum) =>
                int.TryParse(text, out var n) && n >= minimum && n <= maximum
                    ? n
                    : throw new BrokerException($"{option} takes a number from {minimum} to {maximum}, not '{text}'");

            private static uint ParseId(string text, string option) =>
                uint.TryParse(text, out var id) ? id : throw new BrokerException($"{option} takes a numeric id, not '{text}'");
        }

        private static int Serve(Options options, TokenFilter filter, BrokerLog log)
        {
            var (limitBefore, limitAfter) = Posix.RaiseOpenFileLimit();
            uint ownUid = Posix.getuid();
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
