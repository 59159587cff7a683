using System.Diagnostics;
using Net.Pkcs11Interop.Common;
using P11Proxy.Conformance;

namespace P11Proxy.Transparency;

/// <summary>
/// The transparency harness's common ground: the backend every stack serves, the same backend
/// loaded directly in this process (the reference), and the helpers the rows share.
///
/// The backend is native-tests/modules/troublemodule.c in front of SoftHSM: everything is
/// SoftHSM's except C_WaitForSlotEvent, which really blocks until an event file appears (SoftHSM
/// has no slot events). Loaded directly here it fronts a private copy of libsofthsm2.so, so its
/// SoftHSM is not the instance the Conformance fixtures load from the system path.
/// </summary>
[SetUpFixture]
public sealed class TransparencySetUp
{
    internal static string WorkDir = "";
    internal static string TroubleModule = "";
    internal static string Host = "";
    internal static RawModule Direct = null!;
    internal static ulong DirectSlot;
    internal static string DirectEvents = "";
    private static TokenDir? _directToken;

    [OneTimeSetUp]
    public void Build()
    {
        WorkDir = Directory.CreateTempSubdirectory("p11trans-").FullName;
        string sources = Path.Combine(TestContext.CurrentContext.TestDirectory, "native");
        TroubleModule = Path.Combine(WorkDir, "troublemodule.so");
        Compile(["-shared", "-fPIC", "-O2", "-Wall", "-o", TroubleModule, Path.Combine(sources, "troublemodule.c"),
            "-I/usr/include/p11-kit-1", "-ldl", "-lpthread"]);
        Host = Path.Combine(WorkDir, "transhost");
        Compile(["-O2", "-Wall", "-o", Host, Path.Combine(sources, "transhost.c"), "-I/usr/include/p11-kit-1", "-ldl", "-lpthread"]);

        // Direct: the trouble module over its own copy of SoftHSM, with its own token and event directory.
        string softhsmCopy = Path.Combine(WorkDir, "libsofthsm2-direct.so");
        File.Copy(Paths.SoftHsm, softhsmCopy);
        _directToken = new TokenDir("trans-direct");
        DirectEvents = Directory.CreateDirectory(Path.Combine(_directToken.Dir, "events")).FullName;
        string? previousConf = Environment.GetEnvironmentVariable("SOFTHSM2_CONF");
        NativeEnv.Set("TROUBLE_BACKEND", softhsmCopy);
        NativeEnv.Set("SOFTHSM2_CONF", _directToken.Conf);
        NativeEnv.Set("TROUBLE_EVENT_DIR", DirectEvents);
        try
        {
            Direct = RawModule.Load(TroubleModule);
            Assert.That(Direct.Init(), Is.EqualTo(CKR.CKR_OK), "direct: C_Initialize of the trouble module");
        }
        finally
        {
            NativeEnv.Unset("TROUBLE_BACKEND");
            NativeEnv.Unset("TROUBLE_EVENT_DIR");
            if (previousConf is null) NativeEnv.Unset("SOFTHSM2_CONF");
            else NativeEnv.Set("SOFTHSM2_CONF", previousConf);
        }
        DirectSlot = Rows.TokenSlot(Direct, "direct");
    }

    /// <summary>C_Initialize of the direct module again, in its own environment (SoftHSM reads SOFTHSM2_CONF there).</summary>
    internal static void ReinitializeDirect()
    {
        string? previousConf = Environment.GetEnvironmentVariable("SOFTHSM2_CONF");
        NativeEnv.Set("SOFTHSM2_CONF", _directToken!.Conf);
        NativeEnv.Set("TROUBLE_EVENT_DIR", DirectEvents);
        try
        {
            Assert.That(Direct.Init(), Is.EqualTo(CKR.CKR_OK), "direct: C_Initialize again");
        }
        finally
        {
            NativeEnv.Unset("TROUBLE_EVENT_DIR");
            if (previousConf is null) NativeEnv.Unset("SOFTHSM2_CONF");
            else NativeEnv.Set("SOFTHSM2_CONF", previousConf);
        }
    }

    [OneTimeTearDown]
    public void Remove()
    {
        Direct?.Fini();
        _directToken?.Dispose();
        try { Directory.Delete(WorkDir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static void Compile(string[] arguments)
    {
        var (rc, output) = Proc.Run("cc", arguments, []);
        if (rc != 0) Assert.Fail($"cc {string.Join(' ', arguments)} failed ({rc}): {output}");
    }
}

/// <summary>
/// One stack we build, serving the trouble module: our module with our broker, our module with
/// p11-kit's server, p11-kit's client (p11-kit-client.so) with our broker, and our module limited
/// to protocol version 0 with our broker (the broker's side of what p11-kit 0.24 clients send,
/// with a client of ours).
/// </summary>
internal sealed class Stack : IDisposable
{
    public static readonly string[] Names = ["module-broker", "module-p11kit-server", "p11kit-client-broker", "module-v0-broker"];

    public string Name { get; }
    public RawModule Module { get; private set; } = null!;
    public ulong Slot { get; private set; }
    public string Events { get; private set; } = "";
    public string Address { get; private set; } = "";
    public string SocketPath { get; private set; } = "";
    public bool OurModule => Name.StartsWith("module-", StringComparison.Ordinal);
    public bool OurBroker => Name.EndsWith("-broker", StringComparison.Ordinal);
    public string ServerLog => _server?.Log ?? "";

    private TokenDir? _dir;
    private BackendServer? _server;

    public Stack(string name) => Name = name;

    public void Start()
    {
        _dir = new TokenDir("trans-" + Name);
        Events = Directory.CreateDirectory(Path.Combine(_dir.Dir, "events")).FullName;
        SocketPath = Path.Combine(_dir.Dir, "server.sock");
        _server = OurBroker
            ? BackendServer.Broker(_dir.Conf, Events, SocketPath)
            : BackendServer.P11KitServer(_dir.Conf, Events, SocketPath);
        Address = "unix:path=" + SocketPath;
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", Address);
        if (Name == "module-v0-broker") NativeEnv.Set("P11PROXY_PROTOCOL_VERSION", "0");
        else NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        Module = RawModule.Load(OurModule ? Paths.Module() : Paths.P11KitClient);
        var rv = Module.Init();
        Assert.That(rv, Is.EqualTo(CKR.CKR_OK), $"{Name}: C_Initialize; server output: {ServerLog}");
        Slot = Rows.TokenSlot(Module, Name);
    }

    /// <summary>The host loads the module anew (C_GetFunctionList) and initialises it: this stack's module from here on.</summary>
    public CKR Reload()
    {
        Module = Module.Reload();
        return Module.Init();
    }

    public void Dispose()
    {
        try { Module?.Fini(); } catch (Exception) { }
        _server?.Dispose();
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
        NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        _dir?.Dispose();
    }
}

/// <summary>Our broker or p11-kit's server, serving the trouble module with a token and an event directory.</summary>
internal sealed class BackendServer : IDisposable
{
    private readonly Process _process;
    private readonly System.Text.StringBuilder _log = new();

    public string Log { get { lock (_log) return _log.ToString(); } }

    public static BackendServer Broker(string conf, string events, string socket, params string[] extra) =>
        new("p11proxy-broker", Paths.Broker(), ["serve", "--module", TransparencySetUp.TroubleModule, "--socket", socket, .. extra], conf, events, socket);

    public static BackendServer P11KitServer(string conf, string events, string socket) =>
        new("p11-kit server", "p11-kit", ["server", "-f", "-n", socket, "--provider", TransparencySetUp.TroubleModule, $"pkcs11:token={Paths.TokenLabel}"],
            conf, events, socket);

    private BackendServer(string what, string file, string[] args, string conf, string events, string socket)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["SOFTHSM2_CONF"] = conf;
        psi.Environment["TROUBLE_EVENT_DIR"] = events;
        psi.Environment.Remove("TROUBLE_BACKEND");
        psi.Environment.Remove("P11_KIT_SERVER_ADDRESS");
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var until = DateTime.UtcNow.AddSeconds(20);
        while (!File.Exists(socket))
        {
            if (_process.HasExited) Assert.Fail($"{what} exited with {_process.ExitCode} before listening on {socket}: {Log}");
            if (DateTime.UtcNow > until) Assert.Fail($"{what} did not create {socket} within 20 s: {Log}");
            Thread.Sleep(50);
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
    }
}

/// <summary>Helpers shared by the rows.</summary>
internal static class Rows
{
    public const ulong CKO_DATA = 0, CKO_SECRET_KEY = 4, CKK_AES = 0x1f, CKK_DES3 = 0x15;
    public const ulong CKA_CLASS = 0, CKA_TOKEN = 1, CKA_LABEL = 3, CKA_VALUE = 0x11, CKA_KEY_TYPE = 0x100,
        CKA_ENCRYPT = 0x104, CKA_DECRYPT = 0x105, CKA_APPLICATION = 0x10;
    public const ulong CKM_AES_ECB = 0x1081, CKM_AES_CBC = 0x1082, CKM_AES_CBC_PAD = 0x1085, CKM_DES3_CBC = 0x133;

    /// <summary>The slot holding the token labelled "conf".</summary>
    public static ulong TokenSlot(RawModule module, string who)
    {
        ulong count = 0;
        Assert.That(module.GetSlotList(true, null, ref count), Is.EqualTo(CKR.CKR_OK), $"{who}: C_GetSlotList size");
        var slots = new ulong[count];
        Assert.That(module.GetSlotList(true, slots, ref count), Is.EqualTo(CKR.CKR_OK), $"{who}: C_GetSlotList");
        var info = new byte[RawModule.TokenInfoSize];
        foreach (var slot in slots.Take((int)count))
            if (module.GetTokenInfo(slot, info) == CKR.CKR_OK && System.Text.Encoding.UTF8.GetString(info, 0, 32).Trim() == Paths.TokenLabel)
                return slot;
        Assert.Fail($"{who}: no slot with a token labelled '{Paths.TokenLabel}'");
        return 0;
    }

    /// <summary>A logged-in read/write session.</summary>
    public static ulong Session(RawModule module, ulong slot, bool login = true)
    {
        Assert.That(module.OpenSession(slot, RawModule.CKF_SERIAL_SESSION | RawModule.CKF_RW_SESSION, out var session), Is.EqualTo(CKR.CKR_OK), "C_OpenSession");
        if (login)
        {
            // Another session of the same application may have logged the token in already.
            var rv = module.Login(session, Paths.UserPin);
            if (rv != CKR.CKR_OK && rv != CKR.CKR_USER_ALREADY_LOGGED_IN) Assert.Fail($"C_Login: {rv}");
        }
        return session;
    }

    /// <summary>A session object holding a fixed AES-128 key that encrypts and decrypts.</summary>
    public static ulong AesKey(RawModule module, ulong session)
    {
        using var t = Template.Of((CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, false),
            (CKA_VALUE, Convert.FromHexString("2b7e151628aed2a6abf7158809cf4f3c")), (CKA_ENCRYPT, true), (CKA_DECRYPT, true));
        Assert.That(module.CreateObject(session, t, out var key), Is.EqualTo(CKR.CKR_OK), "C_CreateObject (AES key)");
        return key;
    }

    /// <summary>Runs <paramref name="call"/> on its own thread; (false, default) when it has not returned within <paramref name="seconds"/>.</summary>
    public static (bool returned, T value) Bounded<T>(Func<T> call, double seconds, out Thread thread)
    {
        T value = default!;
        Exception? error = null;
        thread = new Thread(() =>
        {
            try { value = call(); }
            catch (Exception e) { error = e; }
        }) { IsBackground = true };
        thread.Start();
        if (!thread.Join(TimeSpan.FromSeconds(seconds))) return (false, default!);
        if (error is not null) throw new InvalidOperationException("the call threw", error);
        return (true, value);
    }

    /// <summary>Raises one slot event for <paramref name="slot"/> in the trouble module watching <paramref name="events"/>.</summary>
    public static void RaiseEvent(string events, ulong slot) => File.WriteAllText(Path.Combine(events, $"event-{slot}"), "");

    /// <summary>Runs the host in a child process (a call that may crash must not take the test run with it).</summary>
    public static string InChild(string[] arguments, Dictionary<string, string> environment)
    {
        var psi = new ProcessStartInfo(TransparencySetUp.Host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill();
            return "hung";
        }
        p.WaitForExit();
        string output = stdout.Result.Trim();
        // A signal shows as 128+N from the runtime's view of the child; say which.
        if (p.ExitCode != 0) output += $" [exit {p.ExitCode}{(p.ExitCode > 128 ? $", signal {p.ExitCode - 128}" : "")}; stderr: {stderr.Result.Trim()}]";
        return output;
    }
}
