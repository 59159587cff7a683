using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Net.Pkcs11Interop.Common;
using P11Proxy.Conformance;
using LL = Net.Pkcs11Interop.LowLevelAPI80;

// A namespace of its own: the conformance namespace's SetUpFixture (SoftHSM, a token) is not needed here.
namespace P11Proxy.HostileBroker;

/// <summary>
/// out/p11proxy.so against a broker that lies: a fake p11-kit RPC peer in this process (a thread on a
/// unix socket) answers the handshake and C_Initialize correctly, then gives the call under test a
/// crafted reply. Each case checks a real outcome: the CK_RV, bounded time, that C_Finalize still
/// returns promptly, and that the caller's memory is safe. Every buffer the module writes into (slot
/// arrays, templates and attribute values, signatures, random bytes, info structures) is exactly the
/// size the caller declares and ends at a guard page (<see cref="GuardedBuffer"/>), so a write past
/// it ends the run; canary bytes show writes before it or where nothing was to be written.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HostileBrokerTests
{
    // p11-kit call ids (rpc-message.h order).
    private const uint CallError = 0, CallInitialize = 1, CallFinalize = 2, CallGetInfo = 3, CallGetSlotList = 4,
        CallOpenSession = 10, CallGetSessionInfo = 13, CallLogin = 18, CallGetAttributeValue = 24, CallSignInit = 42,
        CallSign = 43, CallGenerateRandom = 64;

    private const ulong CKA_LABEL = 0x03, CKA_ID = 0x102, CKA_WRAP_TEMPLATE = 0x40000211;
    private const ulong Unavailable = ulong.MaxValue; // CK_UNAVAILABLE_INFORMATION on LP64

    private LL.Pkcs11Library _lib = null!;
    private ModuleTable _module = null!;
    private FakeBroker? _broker;
    private bool _initialized;

    [OneTimeSetUp]
    public void Load()
    {
        NativeEnv.Unset("P11PROXY_TIMEOUT_MS");
        NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        _lib = new LL.Pkcs11Library(Paths.Module());
        Assert.That(_lib.C_GetFunctionList(out var functionList), Is.EqualTo(CKR.CKR_OK), "C_GetFunctionList");
        _module = new ModuleTable(functionList);
    }

    [OneTimeTearDown]
    public void Unload()
    {
        _lib?.Dispose();
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
        NativeEnv.Unset("P11PROXY_TIMEOUT_MS");
    }

    [TearDown]
    public void CleanUp()
    {
        try
        {
            if (_initialized)
            {
                _initialized = false;
                Bounded("C_Finalize (teardown)", () => _lib.C_Finalize(IntPtr.Zero), 5000);
            }
        }
        finally
        {
            _broker?.Dispose();
            _broker = null;
            NativeEnv.Unset("P11PROXY_TIMEOUT_MS");
        }
    }

    // ------------------------------------------------------------------------------- plumbing

    /// <summary>Starts a fake broker running <paramref name="script"/> after the handshake and C_Initialize, and initialises the module against it.</summary>
    private FakeBroker Start(Action<FakeConnection> script, byte version = 2, Action<FakeConnection>? later = null)
    {
        _broker = new FakeBroker(script, version, later);
        PointModuleAt(_broker.SocketPath);
        var (rv, elapsed) = Bounded("C_Initialize", () => _lib.C_Initialize(null), 5000);
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), $"C_Initialize against the fake broker ({elapsed.TotalMilliseconds:F0} ms); fake: {_broker.Errors}");
        _initialized = true;
        return _broker;
    }

    /// <summary>
    /// Names the fake broker in the environment and has the host load the module again
    /// (C_GetFunctionList): the module reads its settings once per load, at the next C_Initialize.
    /// </summary>
    private void PointModuleAt(string socketPath)
    {
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", "unix:path=" + socketPath);
        Assert.That(_lib.C_GetFunctionList(out _), Is.EqualTo(CKR.CKR_OK), "C_GetFunctionList");
    }

    /// <summary>C_Finalize must return within 2 s whatever state the broker left the connection in.</summary>
    private void Finish()
    {
        _initialized = false;
        var (rv, elapsed) = Bounded("C_Finalize", () => _lib.C_Finalize(IntPtr.Zero), 5000);
        Assert.That(elapsed, Is.LessThan(TimeSpan.FromSeconds(2)), "C_Finalize took too long");
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), "C_Finalize");
    }

    /// <summary>Runs a module call on its own thread so a hang fails the test instead of the run.</summary>
    private static (T value, TimeSpan elapsed) Bounded<T>(string what, Func<T> call, int limitMilliseconds = 10000)
    {
        T result = default!;
        Exception? error = null;
        var watch = Stopwatch.StartNew();
        var thread = new Thread(() =>
        {
            try { result = call(); }
            catch (Exception e) { error = e; }
        }) { IsBackground = true, Name = what };
        thread.Start();
        if (!thread.Join(limitMilliseconds))
            Assert.Fail($"{what} did not return within {limitMilliseconds} ms: the module hangs");
        watch.Stop();
        if (error is not null)
            Assert.Fail($"{what} threw {error.GetType().Name}: {error.Message}");
        return (result, watch.Elapsed);
    }

    private static void AssertPrompt(TimeSpan elapsed, int milliseconds, string what) =>
        Assert.That(elapsed.TotalMilliseconds, Is.LessThan(milliseconds), $"{what} took {elapsed.TotalMilliseconds:F0} ms");

    /// <summary>A slot array of exactly the <paramref name="declared"/> CK_SLOT_IDs the caller passes as its count.</summary>
    private static GuardedBuffer Slots(int declared) => new(declared * sizeof(ulong));

    /// <summary>Slot array elements from <paramref name="from"/> on were not written (and nothing before the array).</summary>
    private static void AssertSlotsUnwritten(GuardedBuffer slots, int from) =>
        slots.AssertUnwritten(from * sizeof(ulong), $"slot array of {slots.Size / sizeof(ulong)}, from element {from}");

    private static long RssKilobytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0]);
        return -1;
    }

    // Replies, built byte by byte as the wire carries them.
    private static Body Reply(uint call, string signature) => new Body().U32(call).Signature(signature);
    private static byte[] ErrorReply(ulong rv) => Reply(CallError, "u").U64(rv).ToArray();
    private static byte[] EmptyReply(uint call) => Reply(call, "").ToArray();

    private static byte[] SlotListReply(params ulong[] slots)
    {
        var body = Reply(CallGetSlotList, "au").Byte(1).U32((uint)slots.Length);
        foreach (var slot in slots) body.U64(slot);
        return body.ToArray();
    }

    private static byte[] GetInfoReply() => Reply(CallGetInfo, "vsusv")
        .Byte(2).Byte(40).Bytes(Encoding.ASCII.GetBytes(new string(' ', 32))).U64(0)
        .Bytes(Encoding.ASCII.GetBytes(new string(' ', 32))).Byte(1).Byte(0).ToArray();

    /// <summary>The fake side of C_OpenSession (session 1) and C_SignInit (accepted).</summary>
    private static void AnswerOpenAndSignInit(FakeConnection c)
    {
        c.Reply(c.Expect(CallOpenSession), Reply(CallOpenSession, "u").U64(1).ToArray());
        c.Reply(c.Expect(CallSignInit), EmptyReply(CallSignInit));
    }

    private ulong OpenAndSignInit()
    {
        ulong session = 0;
        var (rv, _) = Bounded("C_OpenSession", () => _lib.C_OpenSession(0, 6 /* CKF_SERIAL_SESSION | CKF_RW_SESSION */, IntPtr.Zero, IntPtr.Zero, ref session));
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), "C_OpenSession");
        Assert.That(session, Is.EqualTo(1UL), "session handle");
        var mechanism = new LL.CK_MECHANISM { Mechanism = 1 /* CKM_RSA_PKCS */, Parameter = IntPtr.Zero, ParameterLen = 0 };
        (rv, _) = Bounded("C_SignInit", () => _lib.C_SignInit(session, ref mechanism, 2));
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), "C_SignInit");
        return session;
    }

    // ------------------------------------------------------------------------------- controls

    /// <summary>Well-formed answers work: the fake speaks the protocol, so the failures below are the hostility's.</summary>
    [Test]
    public void Control_WellFormedRepliesWork()
    {
        var broker = Start(c =>
        {
            var request = c.Expect(CallGetSlotList);
            // 'yfu': token present byte, then the capacity the caller gave.
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(request.Body.AsSpan(request.Body.Length - 4)), Is.EqualTo(2u), "fu capacity sent");
            c.Reply(request, SlotListReply(5, 6));
            // A reply with frame options (which peers ignore) is still a reply.
            var info = c.Expect(CallGetInfo);
            c.SendFrame(info.Code, GetInfoReply(), options: new byte[16]);
            c.Reply(c.Expect(CallGetAttributeValue), Reply(CallGetAttributeValue, "aAu")
                .U32(2).U32((uint)CKA_LABEL).Byte(1).U32(3).Bytes("abc"u8.ToArray())
                .U32((uint)CKA_WRAP_TEMPLATE).Byte(1).U32(0).U32(0)
                .U64(0).ToArray());
            AnswerOpenAndSignInit(c);
            c.Reply(c.Expect(CallSign), Reply(CallSign, "ay").Byte(1).Bytes(new byte[10]).ToArray());
        });

        using var slots = Slots(2);
        ulong count = 2;
        var (rv, _) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count));
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK));
        Assert.That(count, Is.EqualTo(2UL));
        Assert.That(slots.ULongs(2), Is.EqualTo(new ulong[] { 5, 6 }));
        slots.AssertBelowUntouched("slot array");

        using var info = new GuardedBuffer(ModuleTable.InfoSize);
        (rv, _) = Bounded("C_GetInfo", () => _module.GetInfo(info));
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), "C_GetInfo with frame options");
        Assert.That(info.Bytes[0], Is.EqualTo(2), "cryptokiVersion.major");
        info.AssertBelowUntouched("CK_INFO");

        using (var label = new GuardedBuffer(4))
        using (var template = ModuleTable.Template((CKA_LABEL, label.Pointer, 4), (CKA_WRAP_TEMPLATE, 0, 0)))
        {
            (rv, _) = Bounded("C_GetAttributeValue", () => _module.GetAttributeValue(1, 1, template));
            Assert.That(rv, Is.EqualTo(CKR.CKR_OK));
            Assert.That(ModuleTable.LengthAt(template, 0), Is.EqualTo(3UL));
            Assert.That(label.Bytes[..3].ToArray(), Is.EqualTo("abc"u8.ToArray()));
            label.AssertUnwritten(3, "label");
            template.AssertBelowUntouched("template");
        }

        ulong session = OpenAndSignInit();
        using var signature = new GuardedBuffer(16);
        ulong length = 16;
        (rv, _) = Bounded("C_Sign", () => _module.Sign(session, new byte[32], signature, ref length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK));
        Assert.That(length, Is.EqualTo(10UL));
        signature.AssertUnwritten(10, "signature");

        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>A peer that answers the version handshake with a version higher than offered, on every connection.</summary>
    [Test]
    public void Handshake_VersionAboveOffered_InitializeFails()
    {
        _broker = new FakeBroker(c => c.HandshakeRaw(0xff), 0, null, raw: true);
        PointModuleAt(_broker.SocketPath);
        var (rv, elapsed) = Bounded("C_Initialize", () => _lib.C_Initialize(null), 5000);
        if (rv == CKR.CKR_OK) _initialized = true;
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR));
        AssertPrompt(elapsed, 2000, "C_Initialize");
    }

    /// <summary>A peer that accepts but never answers the handshake: C_Initialize gives up after the timeout.</summary>
    [Test]
    public void Handshake_Stall_InitializeTimesOut()
    {
        NativeEnv.Set("P11PROXY_TIMEOUT_MS", "500");
        _broker = new FakeBroker(c => c.WaitForStop(), 0, null, raw: true);
        PointModuleAt(_broker.SocketPath);
        var (rv, elapsed) = Bounded("C_Initialize", () => _lib.C_Initialize(null), 8000);
        if (rv == CKR.CKR_OK) _initialized = true;
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR));
        AssertPrompt(elapsed, 3000, "C_Initialize against a silent peer");
    }

    // ------------------------------------------------------------------------------- the cases

    /// <summary>1. More slots than the caller's array holds: nothing written past the two given.</summary>
    [Test]
    public void Case01_SlotListLargerThanCallerArray()
    {
        var all = Enumerable.Range(1, 1000).Select(i => (ulong)i).ToArray();
        var broker = Start(c =>
        {
            c.Reply(c.Expect(CallGetSlotList), SlotListReply(all));
            // The same count without the values behind it.
            c.Reply(c.Expect(CallGetSlotList), Reply(CallGetSlotList, "au").Byte(1).U32(1000).U64(1).U64(2).ToArray());
        });

        // Two slots declared: a module writing the third would hit the guard page.
        using var slots = Slots(2);
        ulong count = 2;
        var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count));
        Assert.That(rv, Is.AnyOf(CKR.CKR_BUFFER_TOO_SMALL, CKR.CKR_DEVICE_ERROR));
        if (rv == CKR.CKR_BUFFER_TOO_SMALL) Assert.That(count, Is.EqualTo(1000UL), "the needed count");
        slots.AssertBelowUntouched("slot array");
        AssertPrompt(elapsed, 2000, "C_GetSlotList");

        using var again = Slots(2);
        count = 2;
        (rv, _) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, again, ref count));
        Assert.That(rv, Is.AnyOf(CKR.CKR_BUFFER_TOO_SMALL, CKR.CKR_DEVICE_ERROR), "count 1000 with two values behind it");
        again.AssertBelowUntouched("slot array");

        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>2. A reply carrying another call's id (and other wrong ids or signatures).</summary>
    [Test]
    public void Case02_ReplyOfAnotherCall()
    {
        var broker = Start(c =>
        {
            c.Reply(c.Expect(CallGetSlotList), GetInfoReply());
            // The right call id with another call's signature.
            c.Reply(c.Expect(CallGetSlotList), Reply(CallGetSlotList, "u").U64(3).ToArray());
            // A call id beyond the table.
            c.Reply(c.Expect(CallGetSlotList), Reply(9999, "au").Byte(1).U32(0).ToArray());
        }, version: 0);

        foreach (var what in new[] { "C_GetInfo's reply", "signature 'u'", "call id 9999" })
        {
            using var slots = Slots(2);
            ulong count = 2;
            var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count));
            Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), what);
            Assert.That(count, Is.EqualTo(2UL), $"{what}: count changed");
            AssertSlotsUnwritten(slots, 0);
            AssertPrompt(elapsed, 2000, what);
        }
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>3. A body cut in the middle of a value, and a frame cut short by a disconnect.</summary>
    [Test]
    public void Case03_TruncatedReply()
    {
        var broker = Start(c =>
        {
            // Two slots announced, the second one cut after 4 of its 8 bytes.
            var cut = Reply(CallGetSlotList, "au").Byte(1).U32(2).U64(1).ToArray().Concat(new byte[] { 0, 0, 0, 2 }).ToArray();
            c.Reply(c.Expect(CallGetSlotList), cut);
            // C_GetInfo cut inside the 32-byte manufacturer string.
            var info = Reply(CallGetInfo, "vsusv").Byte(2).Byte(40).U32(32).ToArray().Concat(new byte[10]).ToArray();
            c.Reply(c.Expect(CallGetInfo), info);
            // A header announcing more than is sent, then the connection closes.
            var request = c.Expect(CallGetSlotList);
            var whole = SlotListReply(1, 2, 3);
            c.SendRaw(FakeConnection.Header(request.Code, 0, (uint)whole.Length));
            c.SendRaw(whole.AsSpan(0, whole.Length / 2));
            c.Close();
        });

        using var slots = Slots(2);
        ulong count = 2;
        var (rv, _) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "body cut inside a CK_ULONG");
        slots.AssertBelowUntouched("slot array");

        using var info = new GuardedBuffer(ModuleTable.InfoSize);
        (rv, _) = Bounded("C_GetInfo", () => _module.GetInfo(info));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "body cut inside a space-padded string");
        info.AssertBelowUntouched("CK_INFO");

        using var three = Slots(3);
        count = 3;
        var (rv3, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, three, ref count));
        Assert.That(rv3, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "frame cut by a disconnect");
        three.AssertBelowUntouched("slot array");
        AssertPrompt(elapsed, 2000, "C_GetSlotList on a cut frame");

        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>4. Error replies: CKR_OK in an error reply is a fault; a real code passes through unchanged.</summary>
    [Test]
    public void Case04_ErrorReplies()
    {
        var broker = Start(c =>
        {
            c.Reply(c.Expect(CallLogin), ErrorReply(0));
            c.Reply(c.Expect(CallLogin), ErrorReply(0xA0 /* CKR_PIN_INCORRECT */));
            // An error reply with trailing bytes, and one without its CK_RV.
            c.Reply(c.Expect(CallLogin), Reply(CallError, "u").ToArray());
        });

        var pin = "1234"u8.ToArray();
        var (rv, _) = Bounded("C_Login", () => _lib.C_Login(1, CKU.CKU_USER, pin, (ulong)pin.Length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "error reply carrying CKR_OK");
        (rv, _) = Bounded("C_Login", () => _lib.C_Login(1, CKU.CKU_USER, pin, (ulong)pin.Length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_PIN_INCORRECT), "error reply carrying CKR_PIN_INCORRECT");
        (rv, _) = Bounded("C_Login", () => _lib.C_Login(1, CKU.CKU_USER, pin, (ulong)pin.Length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "error reply without its CK_RV");
        broker.AssertScriptDone();
        Finish();
    }

    [Test]
    public void Case04b_ErrorReplyPassesThroughOnVersion0()
    {
        var broker = Start(c => c.Reply(c.Expect(CallLogin), ErrorReply(0xA0)), version: 0);
        var pin = "1234"u8.ToArray();
        var (rv, _) = Bounded("C_Login", () => _lib.C_Login(1, CKU.CKU_USER, pin, (ulong)pin.Length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_PIN_INCORRECT));
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>5. A reply under the wrong frame code (the next call's code, and code 0): the connection is dropped, later calls fail fast.</summary>
    [TestCase(1u, TestName = "Case05_WrongFrameCode(next call's code)")]
    [TestCase(0u, TestName = "Case05_WrongFrameCode(code 0)")]
    public void Case05_WrongFrameCode(uint variant)
    {
        var broker = Start(c =>
        {
            var request = c.Expect(CallGetSlotList);
            c.SendFrame(variant == 0 ? 0 : request.Code + 1, SlotListReply(1));
        },
        // A reconnection (C_GetSlotList may reconnect) finds a broker that answers properly.
        later: c => c.Reply(c.Expect(CallGetSlotList), SlotListReply(7)));

        using var slots = Slots(2);
        ulong count = 2;
        var (rv, _) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "reply under a frame code nobody waits for");
        AssertSlotsUnwritten(slots, 0);

        using var sessionInfo = new GuardedBuffer(ModuleTable.SessionInfoSize);
        var (next, elapsed) = Bounded("C_GetSessionInfo", () => _module.GetSessionInfo(1, sessionInfo), 5000);
        Assert.That(next, Is.Not.EqualTo(CKR.CKR_OK), "a call on the dropped connection");
        Assert.That(next, Is.EqualTo(CKR.CKR_DEVICE_REMOVED), "a call on the dropped connection");
        AssertPrompt(elapsed, 1000, "C_GetSessionInfo after the connection was dropped");
        sessionInfo.AssertUnwritten(0, "CK_SESSION_INFO of a failed call");

        // A call that may reconnect: either it does (and the fresh connection answers) or it fails fast.
        using var again = Slots(2);
        count = 2;
        (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, again, ref count), 5000);
        Assert.That(rv, Is.AnyOf(CKR.CKR_OK, CKR.CKR_DEVICE_REMOVED, CKR.CKR_DEVICE_ERROR));
        if (rv == CKR.CKR_OK) Assert.That(again.ULong(0), Is.EqualTo(7UL), "slot from the reconnected broker");
        AssertPrompt(elapsed, 2000, "C_GetSlotList after the connection was dropped");
        AssertSlotsUnwritten(again, 1);
        TestContext.Out.WriteLine($"after the drop: C_GetSlotList -> {rv} ({broker.Accepted} connection(s) accepted)");
        Finish();
    }

    /// <summary>6. A broker that never answers, with P11PROXY_TIMEOUT_MS=500.</summary>
    [Test]
    public void Case06_StallWithTimeout()
    {
        NativeEnv.Set("P11PROXY_TIMEOUT_MS", "500");
        Start(c =>
        {
            c.Expect(CallGetSlotList);
            c.WaitForStop();
        });
        using var slots = Slots(2);
        ulong count = 2;
        var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count), 8000);
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR));
        AssertPrompt(elapsed, 3000, "C_GetSlotList on a silent broker");
        Assert.That(elapsed.TotalMilliseconds, Is.GreaterThanOrEqualTo(400), "gave up before the timeout");
        AssertSlotsUnwritten(slots, 0);
        Finish();
        NativeEnv.Unset("P11PROXY_TIMEOUT_MS");
    }

    /// <summary>6b. A broker that never answers C_Finalize (default 5-minute timeout): C_Finalize still returns.</summary>
    [Test]
    public void Case06b_StallOnFinalize()
    {
        Start(c =>
        {
            c.Expect(CallFinalize);
            c.WaitForStop();
        });
        Finish();
    }

    /// <summary>6c. One thread stalled on a silent broker (default timeout) while another calls C_Finalize: both return.</summary>
    [Test]
    public void Case06c_FinalizeWhileAnotherThreadIsStalled()
    {
        var received = new ManualResetEventSlim();
        Start(c =>
        {
            c.Expect(CallGetSlotList);
            received.Set();
            c.WaitForStop();
        });
        // Freed only once the stalled call has returned: the module may still hold the pointer until then.
        var slots = Slots(2);
        ulong count = 2;
        CKR stalledRv = CKR.CKR_OK;
        var stalledWatch = Stopwatch.StartNew();
        var stalled = new Thread(() => stalledRv = _module.GetSlotList(true, slots, ref count)) { IsBackground = true };
        stalled.Start();
        Assert.That(received.Wait(5000), Is.True, "the request never reached the fake broker");
        Thread.Sleep(100);
        Finish();
        Assert.That(stalled.Join(3000), Is.True, "the stalled call was not woken by C_Finalize");
        Assert.That(stalledRv, Is.Not.EqualTo(CKR.CKR_OK));
        TestContext.Out.WriteLine($"stalled call: {stalledRv} after {stalledWatch.ElapsedMilliseconds} ms");
        AssertSlotsUnwritten(slots, 0);
        slots.Dispose();
    }

    /// <summary>7. The broker reads the request and disconnects.</summary>
    [Test]
    public void Case07_DisconnectAfterRequest()
    {
        Start(c =>
        {
            c.Expect(CallGetSlotList);
            c.Close();
        });
        using var slots = Slots(2);
        ulong count = 2;
        var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count), 8000);
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR));
        AssertPrompt(elapsed, 1000, "C_GetSlotList on a vanished broker");
        AssertSlotsUnwritten(slots, 0);
        Finish();
    }

    /// <summary>An 'aAu' reply holding one CKA_WRAP_TEMPLATE nested <paramref name="depth"/> deep, built iteratively.</summary>
    private static byte[] NestedTemplateReply(int depth)
    {
        var head = Reply(CallGetAttributeValue, "aAu").U32(1).ToArray();
        const int level = 13; // type, validity, length, nested count
        var body = new byte[head.Length + depth * level + 8];
        head.CopyTo(body, 0);
        int at = head.Length;
        for (int i = 0; i < depth; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(at), (uint)CKA_WRAP_TEMPLATE);
            body[at + 4] = 1;
            BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(at + 5), 24);
            BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(at + 9), i == depth - 1 ? 0u : 1u);
            at += level;
        }
        // The trailing CK_RV (CKR_OK) stays zero.
        return body;
    }

    /// <summary>8. A template nested 1,000,000 deep (and just past the limit of 8).</summary>
    [TestCase(1_000_000)]
    [TestCase(9)]
    public void Case08_DeeplyNestedTemplate(int depth)
    {
        var reply = NestedTemplateReply(depth);
        var broker = Start(c => c.Reply(c.Expect(CallGetAttributeValue), reply));
        // One CK_ATTRIBUTE declared: a module writing a nested level into a second one hits the guard page.
        using var template = ModuleTable.Template((CKA_WRAP_TEMPLATE, 0, 0));
        var (rv, elapsed) = Bounded("C_GetAttributeValue", () => _module.GetAttributeValue(1, 1, template), 10000);
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), $"template nested {depth} deep");
        AssertPrompt(elapsed, 2000, "C_GetAttributeValue");
        Assert.That(ModuleTable.LengthAt(template, 0), Is.EqualTo(0UL), "template written despite the error");
        template.AssertBelowUntouched("template");
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>9. A 100-byte CKA_LABEL for a 4-byte buffer.</summary>
    [Test]
    public void Case09_LabelLongerThanBuffer()
    {
        var label = Enumerable.Repeat((byte)'L', 100).ToArray();
        var broker = Start(c =>
        {
            // Announced length 100, 100 bytes, and CKR_OK as the call's result.
            c.Reply(c.Expect(CallGetAttributeValue), Reply(CallGetAttributeValue, "aAu")
                .U32(1).U32((uint)CKA_LABEL).Byte(1).U32(100).Bytes(label).U64(0).ToArray());
            // Announced length 4 (the caller's size) with 100 bytes behind it.
            c.Reply(c.Expect(CallGetAttributeValue), Reply(CallGetAttributeValue, "aAu")
                .U32(1).U32((uint)CKA_LABEL).Byte(1).U32(4).Bytes(label).U64(0).ToArray());
            // Announced length 0 with 100 bytes behind it.
            c.Reply(c.Expect(CallGetAttributeValue), Reply(CallGetAttributeValue, "aAu")
                .U32(1).U32((uint)CKA_LABEL).Byte(1).U32(0).Bytes(label).U64(0).ToArray());
        });

        for (int round = 0; round < 3; round++)
        {
            using var buffer = new GuardedBuffer(4);
            using var template = ModuleTable.Template((CKA_LABEL, buffer.Pointer, 4));
            var (rv, _) = Bounded("C_GetAttributeValue", () => _module.GetAttributeValue(1, 1, template));
            string what = round switch { 0 => "length 100", 1 => "length 4 with 100 bytes", _ => "length 0 with 100 bytes" };
            Assert.That(rv, Is.AnyOf(CKR.CKR_BUFFER_TOO_SMALL, CKR.CKR_DEVICE_ERROR), what);
            if (rv == CKR.CKR_BUFFER_TOO_SMALL)
                Assert.That(ModuleTable.LengthAt(template, 0), Is.EqualTo(Unavailable), $"{what}: ulValueLen");
            buffer.AssertBelowUntouched(what);
            template.AssertBelowUntouched($"{what}: template");
            TestContext.Out.WriteLine($"{what}: {rv}, ulValueLen {ModuleTable.LengthAt(template, 0):x}");
        }
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>10. A 300-byte signature for a 16-byte buffer.</summary>
    [Test]
    public void Case10_SignatureLongerThanBuffer()
    {
        var broker = Start(c =>
        {
            AnswerOpenAndSignInit(c);
            var request = c.Expect(CallSign);
            // 'uayfy': the capacity sent is the caller's 16.
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(request.Body.AsSpan(request.Body.Length - 4)), Is.EqualTo(16u), "fy capacity sent");
            c.Reply(request, Reply(CallSign, "ay").Byte(1).Bytes(Enumerable.Repeat((byte)0x5c, 300).ToArray()).ToArray());
        });
        ulong session = OpenAndSignInit();
        using var signature = new GuardedBuffer(16);
        ulong length = 16;
        var (rv, _) = Bounded("C_Sign", () => _module.Sign(session, new byte[32], signature, ref length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_BUFFER_TOO_SMALL));
        Assert.That(length, Is.EqualTo(300UL), "the needed length");
        signature.AssertBelowUntouched("signature");
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>11. A length-only answer of 0xffffffff is the wire's NULL marker, never a size.</summary>
    [Test]
    public void Case11_LengthOnlyNullMarker()
    {
        var nullMarker = Reply(CallSign, "ay").Byte(0).U32(0xffffffff).ToArray();
        var broker = Start(c =>
        {
            AnswerOpenAndSignInit(c);
            c.Reply(c.Expect(CallSign), nullMarker);
            c.Reply(c.Expect(CallSign), nullMarker);
            c.Reply(c.Expect(CallGetSlotList), Reply(CallGetSlotList, "au").Byte(0).U32(0xffffffff).ToArray());
        });
        ulong session = OpenAndSignInit();

        ulong length = 0;
        var (rv, _) = Bounded("C_Sign (size query)", () => _module.Sign(session, new byte[32], null, ref length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "size query answered with 0xffffffff");
        Assert.That(length, Is.Not.EqualTo(0xffffffffUL), "0xffffffff handed out as a size");

        using var signature = new GuardedBuffer(16);
        length = 16;
        (rv, _) = Bounded("C_Sign", () => _module.Sign(session, new byte[32], signature, ref length));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "16-byte buffer answered with length-only 0xffffffff");
        Assert.That(length, Is.Not.EqualTo(0xffffffffUL), "0xffffffff handed out as a size");
        signature.AssertUnwritten(0, "signature");

        ulong count = 0;
        (rv, _) = Bounded("C_GetSlotList (size query)", () => _module.GetSlotList(true, null, ref count));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), "slot count answered with 0xffffffff");
        Assert.That(count, Is.Not.EqualTo(0xffffffffUL));
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>12. C_GenerateRandom(32) answered with 31 and with 33 bytes.</summary>
    [TestCase((byte)2)]
    [TestCase((byte)0)]
    public void Case12_RandomOfWrongLength(byte version)
    {
        var broker = Start(c =>
        {
            c.Reply(c.Expect(CallGenerateRandom), Reply(CallGenerateRandom, "ay").Byte(1).Bytes(Enumerable.Repeat((byte)0x11, 31).ToArray()).ToArray());
            c.Reply(c.Expect(CallGenerateRandom), Reply(CallGenerateRandom, "ay").Byte(1).Bytes(Enumerable.Repeat((byte)0x22, 33).ToArray()).ToArray());
        }, version);

        foreach (int given in new[] { 31, 33 })
        {
            using var random = new GuardedBuffer(32);
            var (rv, _) = Bounded("C_GenerateRandom", () => _module.GenerateRandom(1, random));
            Assert.That(rv, Is.Not.EqualTo(CKR.CKR_OK), $"32 bytes asked, {given} returned");
            random.AssertBelowUntouched($"{given} bytes");
            TestContext.Out.WriteLine($"v{version}, {given} bytes for 32: {rv}");
        }
        broker.AssertScriptDone();
        Finish();
    }

    /// <summary>13. Garbage instead of a frame, and headers announcing enormous bodies: no large allocation.</summary>
    [TestCase("random")]
    [TestCase("http")]
    [TestCase("3GB-body")]
    [TestCase("2GB-options")]
    public void Case13_GarbageStream(string kind)
    {
        var broker = Start(c =>
        {
            var request = c.Expect(CallGetSlotList);
            switch (kind)
            {
                case "random":
                    var noise = new byte[4096];
                    new Random(20240611).NextBytes(noise);
                    c.SendRaw(noise);
                    break;
                case "http":
                    c.SendRaw("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"u8);
                    break;
                case "3GB-body":
                    c.SendRaw(FakeConnection.Header(request.Code, 0, 3_000_000_000));
                    break;
                case "2GB-options":
                    c.SendRaw(FakeConnection.Header(request.Code, 0x7fffffff, 16));
                    break;
            }
            c.WaitForStop(); // keep the connection open: the module must not wait for more
        });

        GC.Collect();
        long before = RssKilobytes();
        using var slots = Slots(2);
        ulong count = 2;
        var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count), 8000);
        long during = RssKilobytes();
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), kind);
        AssertPrompt(elapsed, 1000, $"C_GetSlotList answered with {kind}");
        AssertSlotsUnwritten(slots, 0);
        Finish();
        long after = RssKilobytes();
        TestContext.Out.WriteLine($"{kind}: {rv} in {elapsed.TotalMilliseconds:F0} ms; VmRSS before {before / 1024} MB, after the call {during / 1024} MB, after C_Finalize {after / 1024} MB");
        // Nothing near the announced size may be allocated for a refused header.
        Assert.That(Math.Max(during, after) - before, Is.LessThan(32 * 1024), $"{kind}: RSS grew by {(Math.Max(during, after) - before) / 1024} MB");
        if (before < 150 * 1024)
            Assert.That(Math.Max(during, after), Is.LessThan(200 * 1024), $"VmRSS {Math.Max(during, after) / 1024} MB");
    }

    /// <summary>
    /// 13b. A header announcing a body at the frame limit (64 MiB), the first 10 bytes of it, then a disconnect.
    /// The frame is legal in size, but the peer sent almost nothing: the module may hold at most
    /// about what it was sent, never twice the limit, and must not keep it after C_Finalize.
    /// </summary>
    [Test]
    public void Case13b_BodyAtFrameLimitAnnouncedThenClose_MemoryBounded()
    {
        Start(c =>
        {
            var request = c.Expect(CallGetSlotList);
            c.SendRaw(FakeConnection.Header(request.Code, 0, 64u << 20));
            c.SendRaw(Reply(CallGetSlotList, "au").ToArray());
            c.Close();
        });
        GC.Collect();
        long before = RssKilobytes();
        using var slots = Slots(2);
        ulong count = 2;
        var (rv, elapsed) = Bounded("C_GetSlotList", () => _module.GetSlotList(true, slots, ref count), 8000);
        long during = RssKilobytes();
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR));
        AssertPrompt(elapsed, 1000, "C_GetSlotList answered with a cut 64 MiB frame");
        AssertSlotsUnwritten(slots, 0);
        Finish();
        long after = RssKilobytes();
        TestContext.Out.WriteLine($"64 MiB announced, 10 bytes sent: VmRSS before {before / 1024} MB, after the call {during / 1024} MB, after C_Finalize {after / 1024} MB");
        Assert.That(Math.Max(during, after) - before, Is.LessThan(64 * 1024),
            $"RSS grew by {(Math.Max(during, after) - before) / 1024} MB for 10 body bytes received (before {before / 1024} MB, after the call {during / 1024} MB, after C_Finalize {after / 1024} MB)");
    }

    /// <summary>14. C_GetAttributeValue answered with more, fewer, or reordered attributes.</summary>
    [TestCase("three-for-two")]
    [TestCase("one-for-two")]
    [TestCase("reordered")]
    [TestCase("other-type")]
    public void Case14_AttributeCountOrTypeMismatch(string kind)
    {
        void Attr(Body body, ulong type, string value) => body.U32((uint)type).Byte(1).Bytes(Encoding.ASCII.GetBytes(value));
        var reply = Reply(CallGetAttributeValue, "aAu");
        switch (kind)
        {
            case "three-for-two": reply.U32(3); Attr(reply, CKA_LABEL, "lab"); Attr(reply, CKA_ID, "id"); Attr(reply, CKA_LABEL, "xyz"); break;
            case "one-for-two": reply.U32(1); Attr(reply, CKA_LABEL, "lab"); break;
            case "reordered": reply.U32(2); Attr(reply, CKA_ID, "id"); Attr(reply, CKA_LABEL, "lab"); break;
            case "other-type": reply.U32(2); Attr(reply, CKA_LABEL, "lab"); Attr(reply, 0x11 /* CKA_VALUE */, "val"); break;
        }
        reply.U64(0);
        var broker = Start(c => c.Reply(c.Expect(CallGetAttributeValue), reply.ToArray()));

        using var label = new GuardedBuffer(16);
        using var id = new GuardedBuffer(16);
        // Two CK_ATTRIBUTEs declared: a third written for "three-for-two" would hit the guard page.
        using var template = ModuleTable.Template((CKA_LABEL, label.Pointer, 16), (CKA_ID, id.Pointer, 16));
        var (rv, _) = Bounded("C_GetAttributeValue", () => _module.GetAttributeValue(1, 1, template));
        Assert.That(rv, Is.EqualTo(CKR.CKR_DEVICE_ERROR), kind);
        label.AssertUnwritten(0, $"{kind}: CKA_LABEL buffer");
        id.AssertUnwritten(0, $"{kind}: CKA_ID buffer");
        Assert.That(ModuleTable.TypeAt(template, 0), Is.EqualTo(CKA_LABEL));
        Assert.That(ModuleTable.TypeAt(template, 1), Is.EqualTo(CKA_ID));
        template.AssertBelowUntouched($"{kind}: template");
        broker.AssertScriptDone();
        Finish();
    }
}

/// <summary>A message body as the wire carries it: big-endian integers, length-prefixed arrays.</summary>
internal sealed class Body
{
    private readonly MemoryStream _bytes = new();

    public Body U32(uint value) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, value); _bytes.Write(b); return this; }
    public Body U64(ulong value) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, value); _bytes.Write(b); return this; }
    public Body Byte(byte value) { _bytes.WriteByte(value); return this; }
    public Body Bytes(byte[] value) { U32((uint)value.Length); _bytes.Write(value); return this; }
    public Body Signature(string signature) => Bytes(Encoding.ASCII.GetBytes(signature));
    public byte[] ToArray() => _bytes.ToArray();
}

/// <summary>One frame the module sent.</summary>
internal sealed record Frame(uint Code, byte[] Body)
{
    /// <summary>The frame's options field (ours sends none; p11-kit's client its module name).</summary>
    public byte[] Options { get; init; } = [];

    public uint CallId => Body.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(Body) : uint.MaxValue;
}

internal sealed class FakeProtocolException(string message) : Exception(message);

/// <summary>The fake broker's side of one connection.</summary>
internal sealed class FakeConnection
{
    private readonly Socket _socket;
    private readonly FakeBroker _broker;

    public FakeConnection(Socket socket, FakeBroker broker)
    {
        _socket = socket;
        _broker = broker;
        socket.ReceiveTimeout = 10000;
        socket.SendTimeout = 10000;
    }

    public static byte[] Header(uint code, uint optionsLength, uint bodyLength)
    {
        var header = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(header, code);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(4), optionsLength);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), bodyLength);
        return header;
    }

    private bool ReadExactly(Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int got = _socket.Receive(destination);
            if (got == 0) return false;
            destination = destination[got..];
        }
        return true;
    }

    /// <summary>The version handshake: reads the offered byte, answers <paramref name="answer"/> as given.</summary>
    public void HandshakeRaw(byte answer)
    {
        Span<byte> offered = stackalloc byte[1];
        if (!ReadExactly(offered)) throw new FakeProtocolException("closed before the version byte");
        _broker.Offered = offered[0];
        SendRaw([answer]);
    }

    /// <summary>Answers the lower of the offered version and ours, as a server does.</summary>
    public void Handshake(byte version)
    {
        Span<byte> offered = stackalloc byte[1];
        if (!ReadExactly(offered)) throw new FakeProtocolException("closed before the version byte");
        _broker.Offered = offered[0];
        SendRaw([Math.Min(offered[0], version)]);
    }

    /// <summary>The next frame, or null when the module closed the connection.</summary>
    public Frame? Read()
    {
        var header = new byte[12];
        if (!ReadExactly(header)) return null;
        uint code = BinaryPrimitives.ReadUInt32BigEndian(header);
        uint options = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        if (options > 4096 || length > (64u << 20)) throw new FakeProtocolException($"implausible frame from the module: {options} {length}");
        var rest = new byte[options + length];
        if (!ReadExactly(rest)) throw new FakeProtocolException("the module closed the connection inside a frame");
        var frame = new Frame(code, rest[(int)options..]) { Options = rest[..(int)options] };
        _broker.Requests.Enqueue(frame);
        return frame;
    }

    public Frame Expect(uint callId)
    {
        var frame = Read() ?? throw new FakeProtocolException($"the module closed the connection; expected call {callId}");
        if (frame.CallId != callId)
            throw new FakeProtocolException($"expected call {callId}, the module sent call {frame.CallId}");
        return frame;
    }

    public void SendRaw(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty)
        {
            int sent = _socket.Send(bytes);
            bytes = bytes[sent..];
        }
    }

    public void SendFrame(uint code, byte[] body, byte[]? options = null)
    {
        options ??= [];
        var frame = new byte[12 + options.Length + body.Length];
        Header(code, (uint)options.Length, (uint)body.Length).CopyTo(frame, 0);
        options.CopyTo(frame, 12);
        body.CopyTo(frame, 12 + options.Length);
        SendRaw(frame);
    }

    public void Reply(Frame request, byte[] body) => SendFrame(request.Code, body);

    public void WaitForStop() => _broker.Stopping.WaitHandle.WaitOne();

    public void Close()
    {
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        _socket.Close();
    }

    /// <summary>After the script: answers C_Finalize properly and anything else with CKR_FUNCTION_FAILED, until the module leaves.</summary>
    public void ServeRest()
    {
        try
        {
            while (_socket.Connected && Read() is { } frame)
            {
                if (frame.CallId == 2) Reply(frame, new Body().U32(2).Signature("").ToArray());
                else Reply(frame, new Body().U32(0).Signature("u").U64(6).ToArray());
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or FakeProtocolException) { }
    }
}

/// <summary>
/// A fake p11-kit RPC server on a unix socket in a temporary directory. The first connection runs
/// the handshake (answering <c>version</c>), answers C_Initialize with an empty reply, runs the
/// script, then serves C_Finalize. Later connections (the module reconnecting) run <c>later</c>.
/// </summary>
internal sealed class FakeBroker : IDisposable
{
    private readonly string _dir;
    private readonly Socket _listener;
    private readonly Thread _acceptor;
    private readonly Action<FakeConnection> _script;
    private readonly Action<FakeConnection>? _later;
    private readonly byte _version;
    private readonly bool _raw;
    private readonly ConcurrentBag<Socket> _sockets = new();
    private readonly ConcurrentBag<Thread> _threads = new();
    private readonly ConcurrentQueue<string> _errors = new();
    private readonly ManualResetEventSlim _scriptDone = new();

    public string SocketPath { get; }
    public CancellationTokenSource StopSource { get; } = new();
    public CancellationToken Stopping => StopSource.Token;
    public ConcurrentQueue<Frame> Requests { get; } = new();
    public volatile int Accepted;
    public byte Offered;

    public string Errors => _errors.IsEmpty ? "no errors" : string.Join("; ", _errors);

    public FakeBroker(Action<FakeConnection> script, byte version, Action<FakeConnection>? later, bool raw = false)
    {
        _script = script;
        _version = version;
        _later = later;
        _raw = raw;
        _dir = Directory.CreateTempSubdirectory("p11hostile-").FullName;
        SocketPath = Path.Combine(_dir, "fake.sock");
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        _listener.Listen(8);
        _acceptor = new Thread(AcceptLoop) { IsBackground = true, Name = "fake-broker-accept" };
        _acceptor.Start();
    }

    private void AcceptLoop()
    {
        while (!Stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                if (!_listener.Poll(50_000, SelectMode.SelectRead)) continue;
                socket = _listener.Accept();
            }
            catch (Exception) when (Stopping.IsCancellationRequested) { return; }
            catch (ObjectDisposedException) { return; }
            _sockets.Add(socket);
            int index = Interlocked.Increment(ref Accepted);
            var thread = new Thread(() => Serve(socket, index)) { IsBackground = true, Name = $"fake-broker-{index}" };
            _threads.Add(thread);
            thread.Start();
        }
    }

    private void Serve(Socket socket, int index)
    {
        var connection = new FakeConnection(socket, this);
        bool first = index == 1;
        try
        {
            if (_raw)
            {
                _script(connection);
                return;
            }
            connection.Handshake(_version);
            var init = connection.Expect(1);
            connection.Reply(init, new Body().U32(1).Signature("").ToArray());
            if (first) _script(connection);
            else _later?.Invoke(connection);
        }
        catch (Exception e) when (!Stopping.IsCancellationRequested)
        {
            _errors.Enqueue($"connection {index}: {e.GetType().Name}: {e.Message}");
        }
        catch (Exception) { }
        finally
        {
            if (first) _scriptDone.Set();
        }
        connection.ServeRest();
        try { socket.Close(); } catch (ObjectDisposedException) { }
    }

    /// <summary>The script ran to its end without finding the module's requests other than expected.</summary>
    public void AssertScriptDone()
    {
        Assert.That(_scriptDone.Wait(5000), Is.True, "the fake broker's script did not finish");
        Assert.That(_errors, Is.Empty, $"the fake broker's script failed: {Errors}");
    }

    public void Dispose()
    {
        StopSource.Cancel();
        try { _listener.Close(); } catch (Exception) { }
        foreach (var socket in _sockets)
        {
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            try { socket.Close(); } catch (Exception) { }
        }
        _acceptor.Join(2000);
        foreach (var thread in _threads) thread.Join(2000);
        try { Directory.Delete(_dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
