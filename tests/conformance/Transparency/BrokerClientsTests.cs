using System.Collections.Concurrent;
using Net.Pkcs11Interop.Common;
using P11Proxy.Conformance;
using static P11Proxy.Transparency.Rows;

namespace P11Proxy.Transparency;

/// <summary>
/// Cases with more than one client of one broker serving the trouble module. Each client should
/// see what a process that loaded the module itself sees: its own login, and every slot event.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class BrokerClients
{
    private TokenDir _dir = null!;
    private BackendServer _broker = null!;
    private string _events = "";
    private string _address = "";

    [SetUp]
    public void Start()
    {
        _dir = new TokenDir("trans-clients");
        _events = Directory.CreateDirectory(Path.Combine(_dir.Dir, "events")).FullName;
        string socket = Path.Combine(_dir.Dir, "broker.sock");
        _broker = BackendServer.Broker(_dir.Conf, _events, socket);
        _address = "unix:path=" + socket;
    }

    [TearDown]
    public void Stop()
    {
        _broker.Dispose();
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
        _dir.Dispose();
    }

    /// <summary>A client of the broker in this process: p11-kit-client.so makes a new one per C_GetFunctionList.</summary>
    private RawModule Client()
    {
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", _address);
        var client = RawModule.Load(Paths.P11KitClient);
        Assert.That(client.Init(), Is.EqualTo(CKR.CKR_OK), $"C_Initialize; broker: {_broker.Log}");
        return client;
    }

    /// <summary>
    /// A client logs in, blocks a thread in C_WaitForSlotEvent and exits. Nothing of it may stay
    /// behind in the broker: its login ends with it (as when a process that loaded the module
    /// exits), and the next slot event reaches the clients still there.
    /// </summary>
    [Test]
    public void AClientThatLeavesWhileWaitingLeavesNothingBehind()
    {
        var stays = Client();
        ulong slot = TokenSlot(stays, "the client that stays");

        string left = InChild(["leave", Paths.Module(), Paths.UserPin, "1"], new() { ["P11_KIT_SERVER_ADDRESS"] = _address });
        Assert.That(left, Is.EqualTo("waiting"), "the leaving client logged in and waited");

        // Its login ends with it: a new session of the client that stays is a public one.
        ulong state = ulong.MaxValue;
        var until = DateTime.UtcNow.AddSeconds(10);
        do
        {
            Assert.That(stays.OpenSession(slot, RawModule.CKF_SERIAL_SESSION | RawModule.CKF_RW_SESSION, out var session), Is.EqualTo(CKR.CKR_OK));
            stays.GetSessionState(session, out state);
            stays.CloseSession(session);
            if (state == 2 /* CKS_RW_PUBLIC_SESSION */) break;
            Thread.Sleep(100);
        } while (DateTime.UtcNow < until);

        // The next event reaches the client that stays, not the wait of the one that left.
        RaiseEvent(_events, slot);
        CKR rv;
        ulong got;
        until = DateTime.UtcNow.AddSeconds(10);
        do
        {
            rv = stays.WaitForSlotEvent(RawModule.CKF_DONT_BLOCK, out got);
            if (rv != CKR.CKR_NO_EVENT) break;
            Thread.Sleep(100);
        } while (DateTime.UtcNow < until);
        stays.Fini();

        string outcome = $"session state after the other client left: {(state == 2 ? "CKS_RW_PUBLIC_SESSION" : state == 3 ? "CKS_RW_USER_FUNCTIONS" : state.ToString())}; " +
                         $"next event: {rv}{(rv == CKR.CKR_OK ? got == slot ? " on the token's slot" : $" on slot {got}" : "")}";
        TestContext.Out.WriteLine(outcome);
        Assert.That(outcome, Is.EqualTo("session state after the other client left: CKS_RW_PUBLIC_SESSION; next event: CKR_OK on the token's slot"),
            $"broker: {_broker.Log}");
    }

    /// <summary>Two clients wait: one event wakes both, as it would two processes that loaded the module.</summary>
    [Test]
    public void EveryWaitingClientSeesTheEvent()
    {
        var first = Client();
        var second = Client();
        ulong slot = TokenSlot(first, "first client");
        var results = new ConcurrentQueue<string>();
        var threads = new[] { first, second }.Select((client, i) => new Thread(() =>
        {
            var rv = client.WaitForSlotEvent(0, out var got);
            results.Enqueue($"client {i + 1}: {rv}{(got == slot ? " on the token's slot" : $" on slot {got}")}");
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        Thread.Sleep(500); // lets both waits reach the broker
        RaiseEvent(_events, slot);
        foreach (var t in threads) t.Join(TimeSpan.FromSeconds(10));
        string outcome = string.Join("; ", results.Order());
        TestContext.Out.WriteLine(outcome);
        // A client still blocked is woken by C_Finalize (as the module does), so the threads end.
        Bounded(first.Fini, 15, out _);
        Bounded(second.Fini, 15, out _);
        foreach (var t in threads) t.Join(TimeSpan.FromSeconds(10));
        Assert.That(outcome, Is.EqualTo("client 1: CKR_OK on the token's slot; client 2: CKR_OK on the token's slot"), $"broker: {_broker.Log}");
    }
}
