using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Fuzz;

/// <summary>
/// BrokerFuzz SOCKET --seed N --inputs M [--connections K] [--pid PID] [--pin PIN] [--golden DIR]
///   [--max-rss-mib 64] [--timeout-ms 1000] [--broker-log FILE] [--start I] [--replay I]
/// Sends M mutated requests to a running broker and checks, every 1,000 inputs, that a separate
/// witness connection still gets correct answers, that the broker is alive and that its peak RSS
/// stays under the limit. Exit 0: nothing found; 1: broker death, witness failure, RSS above the
/// limit or a malformed reply; 2: usage or setup error.
/// </summary>
public static class Program
{
    private sealed class Options
    {
        public string Socket = "";
        public ulong Seed = 1;
        public long Inputs = 10_000;
        public long Start;
        public int Connections = 2;
        public int? Pid;
        public string? Pin;
        public string? Golden;
        public long MaxRssKib = 64 * 1024;
        public int TimeoutMs = 1000;
        public string? BrokerLog;
        public long? Replay;
        public int ReuseLimit = 100;
    }

    private static Options _o = new();
    private static List<SeedInput>[] _corpus = [];
    private static TokenFacts _facts = new(0, []);

    // counters
    private static long _next;
    private static long _done, _repliedOk, _repliedError, _closed, _timeouts, _setupFailures, _unmutated, _frameLies;
    private static long _closedOnValid, _badReplies, _witnessChecks;
    private static readonly long[] _timeoutsByCall = new long[256];
    private static readonly long[] _closedByCall = new long[256];
    private static volatile string? _fatal;
    private static readonly object _findingsGate = new();
    private static readonly List<string> _findings = [];
    private static readonly Dictionary<string, int> _closedOnValidExamples = [];

    /// <summary>What each worker is sending now and sent last (for attributing a death or a log line).</summary>
    private static string?[] _inFlight = [];
    private static string?[] _previous = [];

    public static int Main(string[] args)
    {
        try
        {
            _o = Parse(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"BrokerFuzz: {e.Message}");
            Console.Error.WriteLine("usage: BrokerFuzz SOCKET --seed N --inputs M [--connections K] [--pid PID] [--pin PIN] " +
                                    "[--golden DIR] [--max-rss-mib 64] [--timeout-ms 1000] [--broker-log FILE] [--start I] [--replay I]");
            return 2;
        }

        Connection witness;
        try
        {
            witness = Setup();
        }
        catch (Exception e) when (e is SocketException or IOException or BadReplyException)
        {
            Console.Error.WriteLine($"BrokerFuzz: setup against {_o.Socket} failed: {e.Message}");
            return 2;
        }

        var goldenDir = _o.Golden ?? Path.Combine(AppContext.BaseDirectory, "golden");
        _corpus = Corpus.Build(goldenDir, _facts, out int goldenCount);
        Console.WriteLine($"BrokerFuzz: seed {_o.Seed}, inputs {_o.Start}..{_o.Start + _o.Inputs - 1}, {_o.Connections} connection(s), " +
                          $"timeout {_o.TimeoutMs} ms, RSS limit {_o.MaxRssKib / 1024} MiB");
        Console.WriteLine($"BrokerFuzz: slot {_facts.Slot}, object handles [{string.Join(", ", _facts.Objects)}]; corpus " +
                          $"{goldenCount} golden + synthetic + special = {_corpus[0].Count}/{_corpus[1].Count}/{_corpus[2].Count} inputs (versions 0/1/2)");

        if (_o.Replay is { } replay)
            return ReplayOne(replay);

        _inFlight = new string?[_o.Connections];
        _previous = new string?[_o.Connections];
        var workers = new Thread[_o.Connections];
        var stopwatch = Stopwatch.StartNew();
        for (int w = 0; w < workers.Length; w++)
        {
            int id = w;
            workers[w] = new Thread(() => Worker(id)) { IsBackground = true, Name = $"fuzz worker {w}" };
            workers[w].Start();
        }

        long nextCheck = 1000, nextReport = 10;
        long logOffset = _o.BrokerLog is { } log && File.Exists(log) ? new FileInfo(log).Length : 0;
        long peakHwm = 0;
        while (workers.Any(t => t.IsAlive) && _fatal is null)
        {
            Thread.Sleep(100);
            long done = Interlocked.Read(ref _done);
            if (!Alive(out string? why))
            {
                Fatal($"the broker died: {why}");
                break;
            }
            peakHwm = Math.Max(peakHwm, Hwm());
            if (_o.BrokerLog is not null) logOffset = ScanLog(logOffset);
            if (done >= nextCheck)
            {
                nextCheck = (done / 1000 + 1) * 1000;
                CheckWitness(ref witness, done);
                if (_o.Pid is not null && peakHwm > _o.MaxRssKib)
                    Fatal($"broker VmHWM {peakHwm} kB exceeds {_o.MaxRssKib} kB after {done} inputs");
            }
            if (stopwatch.Elapsed.TotalSeconds >= nextReport)
            {
                nextReport += 10;
                Report(stopwatch.Elapsed, "progress");
            }
        }
        foreach (var t in workers) t.Join(_fatal is null ? Timeout.Infinite : 3000);
        if (_fatal is null)
        {
            if (_o.BrokerLog is not null) logOffset = ScanLog(logOffset);
            if (!Alive(out string? why)) Fatal($"the broker died: {why}");
            else CheckWitness(ref witness, Interlocked.Read(ref _done));
            peakHwm = Math.Max(peakHwm, Hwm());
            if (_o.Pid is not null && peakHwm > _o.MaxRssKib)
                Fatal($"broker VmHWM {peakHwm} kB exceeds {_o.MaxRssKib} kB");
        }
        witness.Dispose();
        Report(stopwatch.Elapsed, "final");
        lock (_findingsGate)
        {
            if (_closedOnValidExamples.Count > 0)
            {
                Console.WriteLine("closed although the request decoded (first example per call):");
                foreach (var (call, n) in _closedOnValidExamples.OrderByDescending(p => p.Value).Take(10))
                    Console.WriteLine($"  {call}: {n}");
            }
            foreach (var finding in _findings)
                Console.WriteLine("FINDING: " + finding);
        }
        if (_fatal is not null)
        {
            Console.WriteLine($"FAIL: {_fatal}");
            for (int w = 0; w < _inFlight.Length; w++)
            {
                if (_inFlight[w] is { } now) Console.WriteLine($"  worker {w} in flight: {now}");
                if (_previous[w] is { } before) Console.WriteLine($"  worker {w} previous: {before}");
            }
            return 1;
        }
        if (Interlocked.Read(ref _badReplies) > 0)
        {
            Console.WriteLine("FAIL: the broker sent malformed replies");
            return 1;
        }
        Console.WriteLine("PASS");
        return 0;
    }

    private static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            long Number() => long.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long n) && n >= 0
                ? n : throw new ArgumentException($"{args[i]} needs a non-negative number");
            switch (args[i])
            {
                case "--seed": o.Seed = (ulong)Number(); break;
                case "--inputs": o.Inputs = Number(); break;
                case "--start": o.Start = Number(); break;
                case "--connections": o.Connections = (int)Math.Clamp(Number(), 1, 64); break;
                case "--pid": o.Pid = (int)Number(); break;
                case "--pin": o.Pin = Value(); break;
                case "--golden": o.Golden = Value(); break;
                case "--max-rss-mib": o.MaxRssKib = Number() * 1024; break;
                case "--timeout-ms": o.TimeoutMs = (int)Math.Max(1, Number()); break;
                case "--broker-log": o.BrokerLog = Value(); break;
                case "--replay": o.Replay = Number(); break;
                case "--reuse": o.ReuseLimit = (int)Math.Max(1, Number()); break;
                default:
                    if (args[i].StartsWith("--", StringComparison.Ordinal) || o.Socket.Length > 0)
                        throw new ArgumentException($"unexpected argument {args[i]}");
                    o.Socket = args[i];
                    break;
            }
        }
        if (o.Socket.Length == 0) throw new ArgumentException("the socket path is missing");
        return o;
    }

    // ---- setup and the witness ---------------------------------------------------------------------------

    private static string _witnessLabel = "";

    /// <summary>Opens the witness (version 2), learns the slot and some object handles, logs in if given a PIN.</summary>
    private static Connection Setup()
    {
        var witness = Connection.Open(_o.Socket, 2, 10_000);
        witness.Initialize();
        var slots = SlotList(witness);
        if (slots.Length == 0) throw new IOException("the broker lists no slot with a token");
        ulong slot = slots[0];
        _witnessLabel = TokenLabel(witness, slot);

        var objects = new List<ulong>();
        if (witness.Call(RpcCallId.C_OpenSession, out var opened, slot, CKF_SERIAL_SESSION | CKF_RW_SESSION) == CKR_OK)
        {
            ulong session = (ulong)opened[0]!;
            if (_o.Pin is { } pin)
            {
                ulong rv = witness.Call(RpcCallId.C_Login, out _, session, (ulong)CKU_USER, WireByteArray.Of(Encoding.UTF8.GetBytes(pin)));
                if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
                    Console.WriteLine($"BrokerFuzz: C_Login returned 0x{rv:x}; private objects stay out of the corpus");
            }
            foreach (ulong cls in new[] { CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE, CKO_SECRET_KEY })
            {
                var template = new[] { new WireAttribute { Type = CKA_CLASS, Valid = true, Length = 8, Kind = AttributeValueKind.ULong, Scalar = cls } };
                if (witness.Call(RpcCallId.C_FindObjectsInit, out _, session, template) != CKR_OK) continue;
                if (witness.Call(RpcCallId.C_FindObjects, out var found, session, 4u) == CKR_OK && found[0] is WireULongArray handles)
                    objects.AddRange(handles.Values);
                witness.Call(RpcCallId.C_FindObjectsFinal, out _, session);
            }
            // the witness keeps its session (and the login) for the whole run
        }
        _facts = new TokenFacts(slot, objects.ToArray());
        return witness;
    }

    private static ulong[] SlotList(Connection c)
    {
        ulong rv = c.Call(RpcCallId.C_GetSlotList, out var v, (byte)1, 0u);
        if (rv != CKR_OK || v[0] is not WireULongArray counted)
            throw new BadReplyException($"C_GetSlotList (count) returned 0x{rv:x}");
        rv = c.Call(RpcCallId.C_GetSlotList, out v, (byte)1, counted.Count);
        if (rv != CKR_OK || v[0] is not WireULongArray { Present: true } listed)
            throw new BadReplyException($"C_GetSlotList returned 0x{rv:x}");
        return listed.Values;
    }

    private static string TokenLabel(Connection c, ulong slot)
    {
        ulong rv = c.Call(RpcCallId.C_GetTokenInfo, out var v, slot);
        if (rv != CKR_OK || v[0] is not byte[] label)
            throw new BadReplyException($"C_GetTokenInfo returned 0x{rv:x}");
        return Encoding.ASCII.GetString(label).TrimEnd();
    }

    private static void CheckWitness(ref Connection witness, long done)
    {
        Interlocked.Increment(ref _witnessChecks);
        try
        {
            var slots = SlotList(witness);
            if (!slots.Contains(_facts.Slot))
                throw new BadReplyException($"slot {_facts.Slot} no longer listed ([{string.Join(", ", slots)}])");
            string label = TokenLabel(witness, _facts.Slot);
            if (label != _witnessLabel)
                throw new BadReplyException($"token label '{label}', expected '{_witnessLabel}'");
        }
        catch (Exception e) when (e is SocketException or IOException or BadReplyException)
        {
            Fatal($"witness check after {done} inputs failed: {e.Message}");
        }
    }

    // ---- liveness and memory -----------------------------------------------------------------------------

    private static bool Alive(out string? why)
    {
        why = null;
        if (_o.Pid is not { } pid) return true;
        string status;
        try
        {
            status = File.ReadAllText($"/proc/{pid}/status");
        }
        catch (IOException)
        {
            why = $"process {pid} is gone";
            return false;
        }
        var state = status.Split('\n').FirstOrDefault(l => l.StartsWith("State:", StringComparison.Ordinal)) ?? "";
        if (state.Contains('Z') || state.Contains('X'))
        {
            why = $"process {pid} is a zombie ({state.Trim()})";
            return false;
        }
        return true;
    }

    private static long StatusKib(string field)
    {
        if (_o.Pid is not { } pid) return 0;
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith(field, StringComparison.Ordinal))
                    return long.Parse(line[field.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException) { }
        return 0;
    }

    private static long Hwm() => StatusKib("VmHWM:");

    private static long _lastHwm;

    /// <summary>After each input: a jump of the broker's peak RSS is pinned on the inputs in flight.</summary>
    private static void WatchHwm(Input input, int worker)
    {
        if (_o.Pid is null) return;
        long hwm = Hwm();
        long last = Interlocked.Read(ref _lastHwm);
        if (hwm <= last || Interlocked.CompareExchange(ref _lastHwm, hwm, last) != last) return;
        if (last != 0 && hwm - last >= 2048)
        {
            var others = _inFlight.Select((s, w) => (s, w)).Where(p => p.w != worker && p.s is not null).Select(p => p.s);
            AddFinding($"VmHWM {last} -> {hwm} kB after {Describe(input, 96)}; also in flight: {string.Join(" | ", others)}");
        }
    }

    /// <summary>New lines of the broker's stderr: "internal error" and error-level lines are findings.</summary>
    private static long ScanLog(long offset)
    {
        try
        {
            using var stream = new FileStream(_o.BrokerLog!, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            if (stream.Length <= offset) return stream.Length < offset ? 0 : offset;
            stream.Seek(offset, SeekOrigin.Begin);
            var buffer = new byte[Math.Min(stream.Length - offset, 64 << 20)];
            int read = stream.Read(buffer, 0, buffer.Length);
            int lastNewline = Array.LastIndexOf(buffer, (byte)'\n', read - 1);
            if (lastNewline < 0) return offset;
            foreach (var line in Encoding.UTF8.GetString(buffer, 0, lastNewline).Split('\n'))
                if (line.Contains("internal error", StringComparison.Ordinal) || line.Contains(": error:", StringComparison.Ordinal))
                    AddFinding($"broker log: {line} -- in flight: {string.Join(" | ", _inFlight.Where(s => s is not null))}");
            return offset + lastNewline + 1;
        }
        catch (IOException)
        {
            return offset;
        }
    }

    private static void Fatal(string message)
    {
        lock (_findingsGate)
            _fatal ??= message;
    }

    private static void AddFinding(string message)
    {
        lock (_findingsGate)
            if (_findings.Count < 50)
                _findings.Add(message);
    }

    private static void Report(TimeSpan elapsed, string what)
    {
        long done = Interlocked.Read(ref _done);
        var top = (long[] counts) => string.Join(", ", counts.Select((n, id) => (n, id)).Where(p => p.n > 0)
            .OrderByDescending(p => p.n).Take(5).Select(p => $"{Name((uint)p.id)} {p.n}"));
        Console.WriteLine(
            $"[{what}] {done} inputs in {elapsed.TotalSeconds:0.0} s ({done / Math.Max(elapsed.TotalSeconds, 0.001):0} inputs/s): " +
            $"replied {_repliedOk + _repliedError} (ok {_repliedOk}, error {_repliedError}), closed {_closed}, timeout {_timeouts}; " +
            $"unmutated {_unmutated}, frame lies {_frameLies}, setup failures {_setupFailures}, closed-on-decodable {_closedOnValid}, " +
            $"bad replies {_badReplies}, witness checks {_witnessChecks}; broker VmHWM {Hwm() / 1024.0:0.0} MiB, VmRSS {StatusKib("VmRSS:") / 1024.0:0.0} MiB, " +
            $"threads {StatusKib("Threads:")}");
        if (_timeouts > 0) Console.WriteLine($"    timeouts by call: {top(_timeoutsByCall)}");
        if (what == "final" && _closed > 0) Console.WriteLine($"    closes by call: {top(_closedByCall)}");
    }

    private static string Name(uint id) => id == 255 ? "other" : CallTable.TryGet(id, out var c) ? c.Name : $"id {id}";

    // ---- the fuzzing loop ------------------------------------------------------------------------------

    /// <summary>Input index to its own Random: the same input for the same seed on every run.</summary>
    private static Random RngFor(long index)
    {
        ulong z = _o.Seed * 0x9E3779B97F4A7C15UL + (ulong)index + 0x632BE59BD9B4E019UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return new Random((int)(z ^ (z >> 32)) & int.MaxValue);
    }

    private sealed record Input(long Index, byte Version, string Seed, byte[] Body, FrameSpec? Frame, string Mutations, bool Unmutated);

    private static Input Generate(long index)
    {
        var rng = RngFor(index);
        byte version = (byte)(index % 3);
        var corpus = _corpus[version];
        var seed = corpus[rng.Next(corpus.Count)];
        var log = new List<string>();
        var body = seed.Frame is not null && rng.Next(2) == 0 ? seed.Body : Mutator.Mutate(rng, seed.Body, corpus, log);
        var frame = seed.Frame?.Clone() ?? Mutator.MutateFrame(rng, body.Length, log);
        if (frame is not null && seed.Frame is not null && frame.AnnouncedBody is null && body.Length != seed.Body.Length)
            frame.AnnouncedBody = null;
        return new Input(index, version, seed.Name, body, frame, string.Join("; ", log), log.Count == 1 && log[0] == "unmutated");
    }

    private static string Describe(Input input, int maxHex = 256)
    {
        string hex = Convert.ToHexStringLower(input.Body.AsSpan(0, Math.Min(input.Body.Length, maxHex)));
        return $"seed {_o.Seed} input {input.Index} (version {input.Version}, from '{input.Seed}', {input.Mutations}" +
               $"{(input.Frame is { } f ? ", frame " + f : "")}) body {input.Body.Length} bytes: {hex}{(input.Body.Length > maxHex ? "..." : "")}";
    }

    /// <summary>The body with the marker replaced by the connection's session.</summary>
    private static byte[] Live(byte[] body, ulong session)
    {
        var marker = Corpus.SessionMarkerBytes;
        byte[]? copy = null;
        int from = 0;
        while (true)
        {
            int at = body.AsSpan(from).IndexOf(marker);
            if (at < 0) break;
            copy ??= (byte[])body.Clone();
            BinaryPrimitives.WriteUInt64BigEndian(copy.AsSpan(from + at), session);
            from += at + 8;
        }
        return copy ?? body;
    }

    private static Connection OpenFuzzConnection(byte version)
    {
        var c = Connection.Open(_o.Socket, version, _o.TimeoutMs * 5);
        try
        {
            c.Initialize();
            c.ReceiveTimeout = _o.TimeoutMs;
            return c;
        }
        catch
        {
            c.Dispose();
            throw;
        }
    }

    private static void Worker(int id)
    {
        var connections = new Connection?[3];
        try
        {
            while (_fatal is null)
            {
                long n = Interlocked.Increment(ref _next) - 1;
                if (n >= _o.Inputs) break;
                var input = Generate(_o.Start + n);
                _previous[id] = _inFlight[id];
                _inFlight[id] = Describe(input, 64);
                RunOne(input, connections, verbose: false);
                Interlocked.Increment(ref _done);
                WatchHwm(input, id);
            }
        }
        finally
        {
            foreach (var c in connections) c?.Dispose();
        }
    }

    private static void RunOne(Input input, Connection?[] connections, bool verbose)
    {
        var connection = connections[input.Version];
        if (connection is null || connection.Dead)
        {
            connection?.Dispose();
            connections[input.Version] = connection = null;
            for (int attempt = 0; attempt < 3 && connection is null && _fatal is null; attempt++)
            {
                try
                {
                    connection = OpenFuzzConnection(input.Version);
                }
                catch (Exception e) when (e is SocketException or IOException or BadReplyException)
                {
                    Interlocked.Increment(ref _setupFailures);
                    if (e is BadReplyException) { AddFinding($"setup: {e.Message}"); Interlocked.Increment(ref _badReplies); }
                    if (e is SocketException { SocketErrorCode: SocketError.ConnectionRefused or SocketError.AddressNotAvailable } && !Alive(out _))
                        return;
                    if (attempt == 2 && verbose) Console.WriteLine($"setup failed: {e.Message}");
                    if (attempt == 2 && e is SocketException se && se.SocketErrorCode is SocketError.ConnectionRefused)
                        Fatal($"the broker refuses connections: {e.Message}");
                }
            }
            if (connection is null) return;
            connections[input.Version] = connection;
        }

        if (input.Unmutated) Interlocked.Increment(ref _unmutated);
        if (input.Frame is not null) Interlocked.Increment(ref _frameLies);
        if (connection.Session == 0 && input.Body.AsSpan().IndexOf(Corpus.SessionMarkerBytes) >= 0)
        {
            // Sessions are opened lazily: only inputs that name one pay for it.
            try
            {
                connection.ReceiveTimeout = _o.TimeoutMs * 5;
                if (connection.Call(RpcCallId.C_OpenSession, out var v, _facts.Slot, CKF_SERIAL_SESSION | CKF_RW_SESSION) == CKR_OK)
                    connection.Session = (ulong)v[0]!;
                connection.ReceiveTimeout = _o.TimeoutMs;
            }
            catch (Exception e) when (e is SocketException or IOException or BadReplyException)
            {
                Interlocked.Increment(ref _setupFailures);
                if (e is BadReplyException) { AddFinding($"setup: {e.Message}"); Interlocked.Increment(ref _badReplies); }
                connection.Dispose();
                return;
            }
        }
        var body = Live(input.Body, connection.Session);
        uint callId = body.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(body) : 255;
        int slot = callId < 255 ? (int)callId : 255;
        if (verbose) Console.WriteLine($"sending on a version-{connection.Version} connection, session {connection.Session}: {Convert.ToHexStringLower(body)}");

        Outcome outcome;
        uint sent, code;
        byte[] reply;
        try
        {
            outcome = connection.Exchange(body, input.Frame, out sent, out code, out reply);
        }
        catch (BadReplyException e)
        {
            Interlocked.Increment(ref _badReplies);
            AddFinding($"{e.Message} -- {Describe(input)}");
            connection.Dispose();
            return;
        }
        connection.Uses++;
        switch (outcome)
        {
            case Outcome.Timeout:
                Interlocked.Increment(ref _timeouts);
                Interlocked.Increment(ref _timeoutsByCall[slot]);
                connection.Dispose();
                if (verbose) Console.WriteLine("outcome: timeout");
                return;
            case Outcome.Closed:
                Interlocked.Increment(ref _closed);
                Interlocked.Increment(ref _closedByCall[slot]);
                connection.Dispose();
                if (verbose) Console.WriteLine("outcome: closed");
                if (input.Frame is null && Decodes(body, connection.Profile, out string? name))
                {
                    Interlocked.Increment(ref _closedOnValid);
                    lock (_findingsGate)
                    {
                        _closedOnValidExamples.TryGetValue(name!, out int seen);
                        _closedOnValidExamples[name!] = seen + 1;
                        if (seen == 0) Console.WriteLine($"note: closed on a decodable {name}: {Describe(input)}");
                    }
                }
                return;
        }

        // Replied: a well-formed reply to our call, carrying our code.
        var reader = new RpcMessageReader(connection.Profile);
        var status = reader.Parse(reply, MessageKind.Response);
        string? problem = null;
        if (input.Frame?.Code is null && code != sent)
            problem = $"reply code {code} for request code {sent}";
        else if (status != ParseStatus.Ok)
            problem = $"reply does not parse ({status})";
        else if (!reader.IsError && reader.Call!.Id != (RpcCallId)callId)
            problem = $"reply to call {callId} carries {reader.Call.Name}";
        else if (!WireValues.TryDecode(reader, MessageKind.Response, out _, MechanismOf(body, connection.Profile)))
            problem = $"reply values do not decode";
        if (verbose)
            Console.WriteLine($"outcome: replied {(reader.IsError ? $"error 0x{reader.ErrorCode:x}" : "ok")}: {Convert.ToHexStringLower(reply)}");
        if (problem is not null)
        {
            Interlocked.Increment(ref _badReplies);
            AddFinding($"{problem}: {Convert.ToHexStringLower(reply.AsSpan(0, Math.Min(reply.Length, 128)))} -- {Describe(input)}");
            connection.Dispose();
            return;
        }
        if (reader.IsError) Interlocked.Increment(ref _repliedError);
        else Interlocked.Increment(ref _repliedOk);

        // Keep the connection while it is useful; a lie in the header may have left bytes behind.
        if (input.Frame is not null || connection.Uses >= _o.ReuseLimit || callId == (uint)RpcCallId.C_Finalize ||
            reader.IsError && reader.ErrorCode == CKR_CRYPTOKI_NOT_INITIALIZED)
            connection.Dispose();
    }

    private static bool Decodes(byte[] body, WireProfile profile, out string? name)
    {
        name = null;
        var reader = new RpcMessageReader(profile);
        if (reader.Parse(body, MessageKind.Request) != ParseStatus.Ok || !WireValues.TryDecode(reader, MessageKind.Request, out _))
            return false;
        name = reader.Call!.Name;
        return true;
    }

    private static ulong? MechanismOf(byte[] body, WireProfile profile)
    {
        var reader = new RpcMessageReader(profile);
        if (reader.Parse(body, MessageKind.Request) != ParseStatus.Ok || !WireValues.TryDecode(reader, MessageKind.Request, out var values))
            return null;
        return values.OfType<WireMechanism>().Select(m => (ulong?)m.Type).FirstOrDefault();
    }

    private static int ReplayOne(long index)
    {
        var input = Generate(index);
        Console.WriteLine("replaying " + Describe(input, int.MaxValue));
        var connections = new Connection?[3];
        RunOne(input, connections, verbose: true);
        foreach (var c in connections) c?.Dispose();
        bool alive = Alive(out string? why);
        Console.WriteLine(alive ? "broker alive" : $"broker died: {why}");
        return alive && _badReplies == 0 ? 0 : 1;
    }
}
