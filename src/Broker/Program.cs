using System.Runtime.InteropServices;
using P11Proxy.Broker;
using P11Proxy.Wire.Transport;

// p11proxy-broker: loads one PKCS#11 module and serves it over p11-kit's RPC protocol.
return BrokerMain.Run(args);

namespace P11Proxy.Broker
{
    internal static partial class BrokerMain
    {
        private const string Usage = """
            usage: p11proxy-broker serve --module PATH [--init-reserved STRING] [--socket PATH] [--token URI]...
                                         [--allow-uid UID]... [--allow-gid GID]... [--output-memory-mib N]
                                         [--request-memory-mib N] [--verbose]
                   p11proxy-broker stdio --module PATH [--init-reserved STRING] [--token URI]... [--output-memory-mib N]
                                         [--request-memory-mib N] [--verbose]

              serve   listen on a unix socket (default $XDG_RUNTIME_DIR/p11-kit/pkcs11) and print
                      P11_KIT_SERVER_ADDRESS=... for clients
              stdio   serve one client on stdin/stdout, e.g. P11_KIT_SERVER_ADDRESS='|p11proxy-broker stdio --module ...'
              --init-reserved STRING
                               handed to the module's C_Initialize as pReserved, for modules that take
                               their configuration there (NSS softoken: its database, e.g.
                               "configdir='sql:/path/to/db' certPrefix='' keyPrefix='' secmod='secmod.db' flags=")
              --token URI      only tokens matching a PKCS#11 URI are visible (repeatable)
              --allow-uid/gid  peers besides the broker's own user that may connect (serve)
              --output-memory-mib N
                               memory for large call outputs (64 KiB or more: random bytes, ciphertexts,
                               attribute values) of all clients at once, default 8; each output counts
                               twice (the module's buffer and the reply), so one output is at most N/2 MiB.
                               An output that does not fit fails with CKR_DEVICE_MEMORY and a log line
              --request-memory-mib N
                               memory for large requests (1 MiB or more: data to digest, sign or encrypt in
                               one call) of all clients at once, default 16; a request waits for room, and
                               one larger than N MiB (or that waited 10 s) closes its connection with a log line
              --verbose        trace every call: name, slot/session, result, duration (never PINs or data)
            """;

        [LibraryImport("libc")]
        private static partial uint getuid();

        public static int Run(string[] args)
        {
            if (args.Length == 0 || args[0] is "-h" or "--help")
            {
                Console.Error.WriteLine(Usage);
                return args.Length == 0 ? 2 : 0;
            }
            string mode = args[0];
            Options options;
            try
            {
                options = Options.Parse(args);
            }
            catch (BrokerException e)
            {
                // A mistyped option is the user's to fix: a message, not a stack trace.
                Console.Error.WriteLine($"p11proxy-broker: {e.Message}");
                return 2;
            }
            OutputBudget.Bytes = options.OutputMemory;
            Server.RequestBudget = new FrameBudget(options.RequestMemory);
            var log = new BrokerLog(options.Verbose, quiet: mode == "stdio");
            try
            {
                if (mode is not ("serve" or "stdio"))
                    throw new BrokerException($"unknown mode '{mode}' (use serve or stdio)\n{Usage}");
                if (options.Module is not { } module)
                    throw new BrokerException("--module PATH is required: the PKCS#11 module to serve, e.g. /usr/lib/softhsm/libsofthsm2.so");
                var filter = TokenFilter.Parse(options.Tokens);
                // Before the module is loaded: its allocations from the start follow the same rule.
                NativeHeap.KeepLargeBlocksOutOfThreadHeaps();
                using var backend = Backend.Load(module, options.InitReserved);
                log.Info($"serving {module}{(backend.Has30 ? " (PKCS#11 3.0 interface)" : "")}" +
                         (filter.FiltersAnything ? $", tokens matching {string.Join(" or ", filter.Descriptions)}" : ""));
                var server = new Server(backend, filter, log, options.AllowedUids, options.AllowedGids);
                if (mode == "stdio")
                {
                    server.ServeStdio();
                    return 0;
                }
                return Serve(server, options.Socket ?? ServerAddress.DefaultSocketPath(getuid()), log);
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

            /// <summary>Throws <see cref="BrokerException"/> naming the option that is wrong.</summary>
            public static Options Parse(string[] args)
            {
                var options = new Options();
                for (int i = 1; i < args.Length; i++)
                {
                    string Next() => i + 1 < args.Length ? args[++i] : throw new BrokerException($"{args[i]} needs a value\n{Usage}");
                    switch (args[i])
                    {
                        case "--module": options.Module = Next(); break;
                        case "--socket": options.Socket = Next(); break;
                        case "--init-reserved": options.InitReserved = Next(); break;
                        case "--token": options.Tokens.Add(Next()); break;
                        case "--allow-uid": options.AllowedUids.Add(ParseId(Next(), "--allow-uid")); break;
                        case "--allow-gid": options.AllowedGids.Add(ParseId(Next(), "--allow-gid")); break;
                        case "--output-memory-mib": options.OutputMemory = ParseMebibytes(Next(), "--output-memory-mib"); break;
                        case "--request-memory-mib": options.RequestMemory = ParseMebibytes(Next(), "--request-memory-mib"); break;
                        case "--verbose": case "-v": options.Verbose = true; break;
                        default: throw new BrokerException($"unknown option '{args[i]}'\n{Usage}");
                    }
                }
                return options;
            }

            /// <summary>1 MiB to 64 GiB: a budget of 0 would refuse every large output, which no one means.</summary>
            private static long ParseMebibytes(string text, string option) =>
                long.TryParse(text, out var mib) && mib is >= 1 and <= 65536
                    ? mib << 20
                    : throw new BrokerException($"{option} takes a number of MiB from 1 to 65536, not '{text}'");

            private static uint ParseId(string text, string option) =>
                uint.TryParse(text, out var id) ? id : throw new BrokerException($"{option} takes a numeric id, not '{text}'");
        }

        private static int Serve(Server server, string socketPath, BrokerLog log)
        {
            var activated = UnixListener.FromSystemd(socketPath);
            if (activated is not null)
            {
                log.Info($"listening on the socket systemd passed ({socketPath})");
                return ServeUntilSignal(server, activated, socketPath, log, removeSocket: false);
            }
            string directory = Path.GetDirectoryName(Path.GetFullPath(socketPath))!;
            if (!Directory.Exists(directory))
                Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            if (File.Exists(socketPath) || Directory.Exists(socketPath))
            {
                // A stale socket from a broker that died; a live one would still accept connections.
                try
                {
                    using var probe = RpcChannel.ConnectUnix(socketPath);
                    throw new BrokerException($"another server is already listening on {socketPath}; stop it or choose --socket");
                }
                catch (TransportException)
                {
                    File.Delete(socketPath);
                }
            }
            var listener = UnixListener.Listen(socketPath);
            File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Console.Out.WriteLine($"P11_KIT_SERVER_ADDRESS={ServerAddress.ForUnixPath(socketPath)}; export P11_KIT_SERVER_ADDRESS;");
            Console.Out.WriteLine($"P11_KIT_SERVER_PID={Environment.ProcessId}; export P11_KIT_SERVER_PID;");
            Console.Out.Flush();
            return ServeUntilSignal(server, listener, socketPath, log, removeSocket: true);
        }

        private static int ServeUntilSignal(Server server, UnixListener listener, string socketPath, BrokerLog log, bool removeSocket)
        {

            using var stop = new ManualResetEventSlim();
            void Shutdown(PosixSignalContext context)
            {
                context.Cancel = true;
                log.Info($"received {context.Signal}, shutting down");
                listener.Dispose();
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Shutdown);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Shutdown);
            server.ServeSocket(listener);
            listener.Dispose();
            if (removeSocket)
                try { File.Delete(socketPath); } catch (IOException) { }
            return 0;
        }
    }
}
