using System.Collections.Concurrent;
using System.Diagnostics;
using Net.Pkcs11Interop.Common;
using P11Proxy.Conformance;
using static P11Proxy.Transparency.Rows;

namespace P11Proxy.Transparency;

/// <summary>
/// The differential harness of issue 14: each test drives one case on the trouble module loaded
/// directly and through one stack we build, and asserts equal CK_RVs and outputs. Where a peer we
/// do not control cannot give what direct gives (p11-kit's server has no slot events; protocol
/// version 0 cannot carry AES-CBC), the test asserts exactly what that peer gives, and README says
/// why. p11proxy.so has one state per process: stacks run one after another.
/// </summary>
[TestFixtureSource(typeof(Stack), nameof(Stack.Names))]
[NonParallelizable]
public sealed class Transparency(string name)
{
    private readonly Stack S = new(name);
    private static RawModule Direct => TransparencySetUp.Direct;
    private static ulong DirectSlot => TransparencySetUp.DirectSlot;

    /// <summary>p11-kit 0.24 (Debian 12) speaks protocol version 0 only: every stack with a p11-kit end, and the one limited to it.</summary>
    private bool Protocol0 => S.Name != "module-broker";

    [OneTimeSetUp]
    public void Start() => S.Start();

    [OneTimeTearDown]
    public void Stop() => S.Dispose();

    private void Show(string what, string direct, string stack) =>
        TestContext.Out.WriteLine($"{what}\n  direct: {direct}\n  {S.Name}: {stack}");

    // ------------------------------------------------------------------ blocking calls

    /// <summary>More threads wait than the broker keeps workers per connection (8).</summary>
    private const int Waiters = 10;

    /// <summary>
    /// Ten threads block in C_WaitForSlotEvent(0); another thread's calls are answered meanwhile;
    /// then each event wakes one waiter with its slot.
    /// </summary>
    [Test]
    public void BlockedWaitsBesideOtherThreadsCalls()
    {
        string direct = WaitBeside(Direct, DirectSlot, TransparencySetUp.DirectEvents);
        Assert.That(direct, Is.EqualTo($"other calls: CKR_OK x5 while {Waiters} threads waited; waits: {Waiters} x CKR_OK on the token's slot"), "direct");
        if (S.Name == "module-p11kit-server")
        {
            // p11-kit's server serves tokens through its filter, which has no slot events.
            Assert.That(S.Module.WaitForSlotEvent(0, out _), Is.EqualTo(CKR.CKR_FUNCTION_NOT_SUPPORTED), "p11-kit server: C_WaitForSlotEvent");
            return;
        }
        string stack = WaitBeside(S.Module, S.Slot, S.Events);
        Show("waits beside other calls", direct, stack);
        Assert.That(stack, Is.EqualTo(direct), $"as direct; server output: {S.ServerLog}");
    }

    private static string WaitBeside(RawModule module, ulong slot, string events)
    {
        var results = new ConcurrentQueue<string>();
        var threads = Enumerable.Range(0, Waiters).Select(_ => new Thread(() =>
        {
            var rv = module.WaitForSlotEvent(0, out var got);
            results.Enqueue(got == slot ? $"{rv} on the token's slot" : $"{rv} on slot {got}");
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        Thread.Sleep(500); // lets the waits reach the module (the outcome does not depend on it)

        var (answered, calls) = Bounded(() => OtherCalls(module, slot), 15, out _);
        int returnedMeanwhile = results.Count;
        string outcome = answered
            ? $"other calls: {calls} while {Waiters - returnedMeanwhile} threads waited"
            : $"other calls: no answer within 15 s while {Waiters - returnedMeanwhile} threads waited";

        // One event per waiter: each wakes one of them.
        for (int i = 0; i < Waiters; i++)
        {
            int before = results.Count;
            RaiseEvent(events, slot);
            var until = DateTime.UtcNow.AddSeconds(15);
            while (results.Count == before && DateTime.UtcNow < until) Thread.Sleep(10);
            if (results.Count == before)
            {
                outcome += $"; event {i + 1} woke no waiter within 15 s";
                break;
            }
        }
        foreach (var t in threads) t.Join(TimeSpan.FromSeconds(5));
        var waits = results.GroupBy(r => r).Select(g => $"{g.Count()} x {g.Key}").Order();
        return $"{outcome}; waits: {string.Join(", ", waits)}";
    }

    /// <summary>C_GetSlotList, C_GetTokenInfo, C_OpenSession, C_GenerateRandom, C_CloseSession.</summary>
    private static string OtherCalls(RawModule module, ulong slot)
    {
        var rvs = new List<CKR>();
        ulong count = 0;
        rvs.Add(module.GetSlotList(true, null, ref count));
        rvs.Add(module.GetTokenInfo(slot, new byte[RawModule.TokenInfoSize]));
        rvs.Add(module.OpenSession(slot, RawModule.CKF_SERIAL_SESSION, out var session));
        rvs.Add(module.GenerateRandom(session, new byte[16], 16));
        rvs.Add(module.CloseSession(session));
        return rvs.All(rv => rv == CKR.CKR_OK) ? "CKR_OK x5" : string.Join(",", rvs);
    }

    /// <summary>C_Finalize while a thread waits: C_Finalize succeeds, the waiter gets CKR_CRYPTOKI_NOT_INITIALIZED.</summary>
    [Test]
    public void FinalizeWakesAWaitingThread()
    {
        string direct = FinalizeDuringWait(Direct, TransparencySetUp.ReinitializeDirect, out var directTime);
        Assert.That(direct, Is.EqualTo("C_Finalize: CKR_OK; the waiting thread: CKR_CRYPTOKI_NOT_INITIALIZED"), "direct");
        if (S.Name == "module-p11kit-server")
        {
            Assert.That(S.Module.WaitForSlotEvent(0, out _), Is.EqualTo(CKR.CKR_FUNCTION_NOT_SUPPORTED), "p11-kit server: C_WaitForSlotEvent");
            return;
        }
        string stack = FinalizeDuringWait(S.Module, () => Assert.That(S.Module.Init(), Is.EqualTo(CKR.CKR_OK), "C_Initialize again"), out var stackTime);
        Show("C_Finalize during a wait", $"{direct} ({directTime.TotalMilliseconds:F0} ms)", $"{stack} ({stackTime.TotalMilliseconds:F0} ms)");
        Assert.That(stack, Is.EqualTo(direct), $"as direct; server output: {S.ServerLog}");
    }

    private static string FinalizeDuringWait(RawModule module, Action reinitialize, out TimeSpan elapsed)
    {
        CKR waited = unchecked((CKR)ulong.MaxValue);
        var waiter = new Thread(() => waited = module.WaitForSlotEvent(0, out _)) { IsBackground = true };
        waiter.Start();
        Thread.Sleep(500); // lets the wait reach the module
        var watch = Stopwatch.StartNew();
        var (returned, finalized) = Bounded(module.Fini, 15, out _);
        bool woke = waiter.Join(TimeSpan.FromSeconds(15));
        elapsed = watch.Elapsed;
        string outcome = (returned ? $"C_Finalize: {finalized}" : "C_Finalize: no return within 15 s") +
                         (woke ? $"; the waiting thread: {waited}" : "; the waiting thread: still waiting after 15 s");
        reinitialize();
        return outcome;
    }

    // ------------------------------------------------------------------ argument checks

    [Test]
    public void CloseAllSessionsOfASlot()
    {
        string Run(RawModule module, ulong slot)
        {
            var unknown = module.CloseAllSessions(88888);
            var session = Session(module, slot, login: false);
            var known = module.CloseAllSessions(slot);
            var after = module.GetSessionState(session, out _);
            return $"C_CloseAllSessions(88888): {unknown}; C_CloseAllSessions(token's slot): {known}, then its session: {after}";
        }
        string direct = Run(Direct, DirectSlot);
        Assert.That(direct, Is.EqualTo("C_CloseAllSessions(88888): CKR_SLOT_ID_INVALID; C_CloseAllSessions(token's slot): CKR_OK, then its session: CKR_SESSION_HANDLE_INVALID"), "direct");
        string stack = Run(S.Module, S.Slot);
        Show("C_CloseAllSessions", direct, stack);
        Assert.That(stack, Is.EqualTo(direct), "as direct");
    }

    /// <summary>
    /// An empty template (count 0, a valid non-NULL pointer) where the call accepts one. p11-kit's
    /// client aborts its process (an assertion in rpc-client.c, every version) when it reads the
    /// answer to a C_GetAttributeValue of no attributes, whatever server gave it: not asked of it.
    /// </summary>
    [Test]
    public void EmptyTemplates()
    {
        bool askGetAttributeValue = S.OurModule;
        string Run(RawModule module, ulong slot)
        {
            var session = Session(module, slot);
            try
            {
                using var data = Template.Of((CKA_CLASS, CKO_DATA), (CKA_TOKEN, false), (CKA_LABEL, "trans-empty"), (CKA_VALUE, new byte[] { 1, 2, 3 }));
                Assert.That(module.CreateObject(session, data, out var handle), Is.EqualTo(CKR.CKR_OK), "C_CreateObject");
                using var empty = Template.Of();
                var copy = module.CopyObject(session, handle, empty, out var copied);
                var set = module.SetAttributeValue(session, handle, empty);
                string get = askGetAttributeValue ? module.GetAttributeValue(session, handle, empty).ToString() : "not asked";
                var find = module.FindObjectsInit(session, empty);
                module.FindObjectsFinal(session);
                var create = module.CreateObject(session, empty, out _);
                return $"C_CopyObject: {copy}{(copy == CKR.CKR_OK ? copied != 0 && copied != handle ? " (a new object)" : $" (handle {copied})" : "")}; " +
                       $"C_SetAttributeValue: {set}; C_GetAttributeValue: {get}; C_FindObjectsInit: {find}; C_CreateObject: {create}";
            }
            finally { module.CloseSession(session); }
        }
        string direct = Run(Direct, DirectSlot);
        Assert.That(direct, Does.StartWith("C_CopyObject: CKR_OK (a new object); C_SetAttributeValue: CKR_OK; C_GetAttributeValue: " +
                                           (askGetAttributeValue ? "CKR_OK" : "not asked") + "; C_FindObjectsInit: CKR_OK"), "direct");
        string stack = Run(S.Module, S.Slot);
        Show("empty templates", direct, stack);
        Assert.That(stack, Is.EqualTo(direct), "as direct");
    }

    /// <summary>
    /// A non-NULL output buffer of length 0 where nothing remains to be output (p11-kit 0.24's client
    /// cannot tell it from a size query on the wire): the call succeeds and ends the operation.
    /// Also the two-pass form: the size query, then the zero-length buffer.
    /// </summary>
    [Test]
    public void ZeroLengthOutputBuffers()
    {
        string Run(RawModule module, ulong slot)
        {
            var session = Session(module, slot);
            try
            {
                var key = AesKey(module, session);
                var block = Convert.FromHexString("6bc1bee22e409f96e93d7e117393172a");
                var steps = new List<string>();
                ulong length;
                // One pass: C_EncryptFinal(buffer, &0).
                Assert.That(module.EncryptInit(session, CKM_AES_ECB, null, key), Is.EqualTo(CKR.CKR_OK), "C_EncryptInit");
                length = 16;
                var output = new byte[16];
                steps.Add($"update {module.EncryptUpdate(session, block, output, ref length)} {length} {Convert.ToHexString(output)}");
                length = 0;
                steps.Add($"final(buffer, 0) {module.EncryptFinal(session, [], ref length)} {length}");
                steps.Add($"init again {module.EncryptInit(session, CKM_AES_ECB, null, key)}");
                // Two passes: C_EncryptFinal(NULL, &n), then C_EncryptFinal(buffer, &0).
                length = 16;
                steps.Add($"update {module.EncryptUpdate(session, block, new byte[16], ref length)} {length}");
                length = 99;
                steps.Add($"final(NULL) {module.EncryptFinal(session, null, ref length)} {length}");
                length = 0;
                steps.Add($"final(buffer, 0) {module.EncryptFinal(session, [], ref length)} {length}");
                steps.Add($"init again {module.DecryptInit(session, CKM_AES_ECB, null, key)}");
                // The same for decryption.
                length = 16;
                var plain = new byte[16];
                steps.Add($"decrypt update {module.DecryptUpdate(session, output, plain, ref length)} {length} {Convert.ToHexString(plain)}");
                length = 0;
                steps.Add($"decrypt final(buffer, 0) {module.DecryptFinal(session, [], ref length)} {length}");
                steps.Add($"init again {module.DecryptInit(session, CKM_AES_ECB, null, key)}");
                return string.Join("; ", steps);
            }
            finally { module.CloseSession(session); }
        }
        string direct = Run(Direct, DirectSlot);
        Assert.That(direct, Does.Contain("final(buffer, 0) CKR_OK 0; init again CKR_OK"), "direct");
        string stack = Run(S.Module, S.Slot);
        Show("zero-length output buffers", direct, stack);
        Assert.That(stack, Is.EqualTo(direct), $"as direct; server output: {S.ServerLog}");
    }

    /// <summary>
    /// A NULL output array with a non-zero length: C_GenerateRandom, C_FindObjects. Protocol 0
    /// sends C_GenerateRandom(NULL, n) exactly as C_GenerateRandom(buffer, 0), which callers make on
    /// purpose (pkcs11-tool --test, native-tests/05): through p11-kit 0.24's client the broker takes
    /// it for the latter, so it succeeds with no bytes (README, "Differences").
    /// </summary>
    [Test]
    public void NullOutputArrays()
    {
        string Run(RawModule module, ulong slot)
        {
            var session = Session(module, slot, login: false);
            try
            {
                var random = module.GenerateRandom(session, null, 16);
                var none = module.GenerateRandom(session, new byte[1], 0);
                using var empty = Template.Of();
                Assert.That(module.FindObjectsInit(session, empty), Is.EqualTo(CKR.CKR_OK), "C_FindObjectsInit");
                var find = module.FindObjects(session, null, 8, out _);
                module.FindObjectsFinal(session);
                return $"C_GenerateRandom(NULL, 16): {random}; C_GenerateRandom(buffer, 0): {none}; C_FindObjects(NULL, 8): {find}";
            }
            finally { module.CloseSession(session); }
        }
        string direct = Run(Direct, DirectSlot);
        Assert.That(direct, Is.EqualTo("C_GenerateRandom(NULL, 16): CKR_ARGUMENTS_BAD; C_GenerateRandom(buffer, 0): CKR_OK; C_FindObjects(NULL, 8): CKR_ARGUMENTS_BAD"), "direct");
        string stack = Run(S.Module, S.Slot);
        Show("NULL output arrays", direct, stack);
        if (S.Name == "p11kit-client-broker")
            Assert.That(stack, Is.EqualTo("C_GenerateRandom(NULL, 16): CKR_OK; C_GenerateRandom(buffer, 0): CKR_OK; C_FindObjects(NULL, 8): CKR_ARGUMENTS_BAD"),
                "protocol 0 from p11-kit's client: C_GenerateRandom(NULL, n) cannot be told from C_GenerateRandom(buffer, 0)");
        else
            Assert.That(stack, Is.EqualTo(direct), "as direct");
    }

    /// <summary>
    /// An IV of the wrong length is the backend's to judge: SoftHSM says CKR_MECHANISM_INVALID. On
    /// protocol version 0 AES-CBC cannot be carried at all, so it is refused as p11-kit 0.24 refuses it.
    /// </summary>
    [Test]
    public void IvLengthsAreTheBackendsToJudge()
    {
        string Run(RawModule module, ulong slot)
        {
            var session = Session(module, slot);
            try
            {
                var key = AesKey(module, session);
                var steps = new List<string>
                {
                    $"AES-CBC 15-byte IV: {module.EncryptInit(session, CKM_AES_CBC, new byte[15], key)}",
                    $"AES-CBC-PAD 17-byte IV: {module.DecryptInit(session, CKM_AES_CBC_PAD, new byte[17], key)}",
                    $"AES-CBC 8-byte IV: {module.EncryptInit(session, CKM_AES_CBC, new byte[8], key)}",
                };
                return string.Join("; ", steps);
            }
            finally { module.CloseSession(session); }
        }
        string direct = Run(Direct, DirectSlot);
        Assert.That(direct, Is.EqualTo("AES-CBC 15-byte IV: CKR_MECHANISM_INVALID; AES-CBC-PAD 17-byte IV: CKR_MECHANISM_INVALID; AES-CBC 8-byte IV: CKR_MECHANISM_INVALID"), "direct");
        string stack = Run(S.Module, S.Slot);
        Show("IV lengths", direct, stack);
        // Protocol 0 carries no AES-CBC (p11-kit 0.24 hides it): refused with CKR_MECHANISM_INVALID
        // whatever the IV, which is also what SoftHSM says about these IVs.
        Assert.That(stack, Is.EqualTo(direct), Protocol0 ? "protocol 0: AES-CBC is refused as p11-kit 0.24 refuses it" : "as direct");
    }

    /// <summary>C_Initialize with pReserved pointing at garbage: CKR_ARGUMENTS_BAD, never a crash.</summary>
    [TestCase("low")]
    [TestCase("guard")]
    [TestCase("unterminated")]
    [TestCase("binary")]
    public void InitializeWithGarbageInPReserved(string kind)
    {
        string direct = InChild(["init-garbage", Paths.SoftHsm, kind], []);
        Assert.That(direct, Is.EqualTo($"C_Initialize=0x{(ulong)CKR.CKR_ARGUMENTS_BAD:x}"), "direct");
        if (!S.OurModule && kind != "binary")
        {
            // p11-kit's client takes pReserved for a string and reads it (strlen) before anything
            // reaches our broker: an unreadable pointer crashes it. Not ours to fix; not run.
            Assert.Pass("p11-kit's client reads pReserved as a C string: only readable garbage can reach the broker");
        }
        string stack = InChild(["init-garbage", S.Module.Path, kind], new() { ["P11_KIT_SERVER_ADDRESS"] = S.Address });
        Show($"pReserved = {kind}", direct, stack);
        Assert.That(stack, Is.EqualTo(direct), "as direct");
    }

    // ------------------------------------------------------------------ identity and settings

    /// <summary>
    /// The CK_INFO a host sees through a stack is not the backend's: GnuTLS drops a module whose
    /// CK_INFO equals another's, so a host that also loads the backend itself must see two.
    /// </summary>
    [Test]
    public void GetInfoIdentifiesTheProxy()
    {
        var direct = new byte[RawModule.InfoSize];
        var stack = new byte[RawModule.InfoSize];
        Assert.That(Direct.GetInfo(direct), Is.EqualTo(CKR.CKR_OK), "direct C_GetInfo");
        Assert.That(S.Module.GetInfo(stack), Is.EqualTo(CKR.CKR_OK), "C_GetInfo");
        string Text(byte[] info, int offset) => System.Text.Encoding.ASCII.GetString(info, offset, 32).TrimEnd(' ');
        string Describe(byte[] info) =>
            $"cryptoki {info[0]}.{info[1]}, '{Text(info, 2)}', '{Text(info, 48)}', library {info[80]}.{info[81]}";
        Show("C_GetInfo", Describe(direct), Describe(stack));
        Assert.That(stack, Is.Not.EqualTo(direct), "a CK_INFO of its own, not the backend's");
        Assert.That((stack[0], stack[1]), Is.EqualTo((direct[0], direct[1])), "the backend's cryptoki version");
        // Our module names itself; p11-kit's client passes on what the server says, and our broker names itself as p11-kit's server does.
        var (manufacturer, description) = S.OurModule ? ("p11proxy", "p11proxy PKCS#11 remoting module") : ("p11proxy", "p11proxy-broker");
        Assert.That((Text(stack, 2), Text(stack, 48)), Is.EqualTo((manufacturer, description)), "manufacturer and description");
    }

    /// <summary>
    /// The broker's address is found when the host loads the module and kept: a re-initialisation
    /// after the environment lost it, or changed it, still reaches the same broker (nginx workers,
    /// daemons that clear their environment). p11-kit's client behaves the same way.
    /// </summary>
    [Test]
    public void AddressIsSettledAtLoad()
    {
        string runtime = Directory.CreateTempSubdirectory("p11trans-runtime-").FullName; // no broker's socket there
        string? previousRuntime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        var steps = new List<string>();
        try
        {
            Assert.That(S.Module.Fini(), Is.EqualTo(CKR.CKR_OK), "C_Finalize");
            NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
            NativeEnv.Set("XDG_RUNTIME_DIR", runtime);
            var rv = S.Module.Init();
            steps.Add($"environment emptied: C_Initialize {rv}");
            if (rv == CKR.CKR_OK)
            {
                steps.Add($"token {(TokenSlot(S.Module, S.Name) == S.Slot ? "the same" : "another")}");
                S.Module.Fini();
            }
            NativeEnv.Set("P11_KIT_SERVER_ADDRESS", "unix:path=" + Path.Combine(runtime, "no-such-socket"));
            rv = S.Module.Init();
            steps.Add($"environment naming another address: C_Initialize {rv}");
            if (rv == CKR.CKR_OK) S.Module.Fini();
            if (S.OurModule)
            {
                // A host that loads the module again (C_GetFunctionList) gets the address read afresh.
                rv = S.Reload();
                steps.Add($"loaded again: C_Initialize {rv}");
                if (rv == CKR.CKR_OK) S.Module.Fini();
            }
        }
        finally
        {
            NativeEnv.Set("P11_KIT_SERVER_ADDRESS", S.Address);
            if (previousRuntime is null) NativeEnv.Unset("XDG_RUNTIME_DIR");
            else NativeEnv.Set("XDG_RUNTIME_DIR", previousRuntime);
            // Loaded again in the stack's environment, initialised, for the tests that follow.
            var rv = S.Reload();
            if (rv != CKR.CKR_OK) Assert.Fail($"re-initialising against {S.Address}: {rv}");
            Directory.Delete(runtime, true);
        }
        string outcome = string.Join("; ", steps);
        TestContext.Out.WriteLine($"{S.Name}: {outcome}");
        Assert.That(outcome, Is.EqualTo("environment emptied: C_Initialize CKR_OK; token the same; environment naming another address: C_Initialize CKR_OK" +
                                        (S.OurModule ? "; loaded again: C_Initialize CKR_DEVICE_ERROR" : "")));
    }
}
