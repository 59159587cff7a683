using System.Diagnostics;
using System.Runtime.InteropServices;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace P11Proxy.Conformance;

/// <summary>The native environment: what native libraries (SoftHSM, p11proxy.so, p11-kit-client.so)
/// and the children they spawn read. Environment.SetEnvironmentVariable does not reach it.</summary>
internal static class NativeEnv
{
    [DllImport("libc", EntryPoint = "setenv", SetLastError = true)]
    private static extern int c_setenv(string name, string value, int overwrite);

    [DllImport("libc", EntryPoint = "unsetenv", SetLastError = true)]
    private static extern int c_unsetenv(string name);

    public static void Set(string name, string value)
    {
        if (c_setenv(name, value, 1) != 0) throw new InvalidOperationException($"setenv {name} failed: errno {Marshal.GetLastWin32Error()}");
        Environment.SetEnvironmentVariable(name, value);
    }

    public static void Unset(string name)
    {
        c_unsetenv(name);
        Environment.SetEnvironmentVariable(name, null);
    }
}

internal static class Paths
{
    public const string SoftHsm = "/usr/lib/softhsm/libsofthsm2.so";
    public const string P11KitClient = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
    public const string TokenLabel = "conf";
    public const string SoPin = "12345678";
    public const string UserPin = "1234";

    public static string Module()
    {
        var m = Environment.GetEnvironmentVariable("P11PROXY_MODULE");
        if (string.IsNullOrEmpty(m))
            Assert.Fail("P11PROXY_MODULE is not set: run `./build.sh test` (it builds out/p11proxy.so and exports P11PROXY_MODULE), " +
                        "or export P11PROXY_MODULE=/work/main/out/p11proxy.so after `./build.sh`");
        if (!File.Exists(m)) Assert.Fail($"P11PROXY_MODULE={m} does not exist: run `./build.sh` first");
        return Path.GetFullPath(m!);
    }

    public static string Broker()
    {
        var b = Environment.GetEnvironmentVariable("P11PROXY_BROKER");
        if (string.IsNullOrEmpty(b)) b = Path.Combine(Path.GetDirectoryName(Module())!, "p11proxy-broker");
        if (!File.Exists(b))
            Assert.Fail($"the broker {b} does not exist (set P11PROXY_BROKER or build it with ./build.sh): the broker targets cannot run");
        return Path.GetFullPath(b);
    }
}

/// <summary>A throw-away SoftHSM token directory with its own softhsm2.conf and one token "conf".</summary>
internal sealed class TokenDir : IDisposable
{
    public string Dir { get; }
    public string Conf { get; }

    public TokenDir(string name)
    {
        Dir = Directory.CreateTempSubdirectory($"p11conf-{name}-").FullName;
        Directory.CreateDirectory(Path.Combine(Dir, "tokens"));
        Conf = Path.Combine(Dir, "softhsm2.conf");
        File.WriteAllText(Conf, $"directories.tokendir = {Path.Combine(Dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n");
        var (rc, output) = Proc.Run("softhsm2-util",
            ["--init-token", "--free", "--label", Paths.TokenLabel, "--so-pin", Paths.SoPin, "--pin", Paths.UserPin],
            new() { ["SOFTHSM2_CONF"] = Conf });
        if (rc != 0) Assert.Fail($"softhsm2-util --init-token failed ({rc}): {output}");
    }

    public void Dispose()
    {
        try { Directory.Delete(Dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

internal static class Proc
{
    public static (int rc, string output) Run(string file, string[] args, Dictionary<string, string> env)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}

/// <summary>A server process (p11-kit server or our broker) listening on a unix socket.</summary>
internal sealed class Server : IDisposable
{
    private readonly Process _process;
    private readonly System.Text.StringBuilder _log = new();
    public string Socket { get; }
    public string Log { get { lock (_log) return _log.ToString(); } }
    public bool Running => !_process.HasExited;

    public Server(string what, string file, string[] args, string conf, string socket, IReadOnlyDictionary<string, string>? env = null)
    {
        Socket = socket;
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["SOFTHSM2_CONF"] = conf;
        psi.Environment.Remove("P11_KIT_SERVER_ADDRESS");
        foreach (var (name, value) in env ?? new Dictionary<string, string>()) psi.Environment[name] = value;
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var until = DateTime.UtcNow.AddSeconds(10);
        while (!File.Exists(socket))
        {
            if (_process.HasExited)
                Assert.Fail($"{what} exited with {_process.ExitCode} before listening on {socket}: {Log}");
            if (DateTime.UtcNow > until)
                Assert.Fail($"{what} did not create {socket} within 10 s: {Log}");
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
            _process.WaitForExit();
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
    }
}

/// <summary>The reference: SoftHSM loaded directly in this process, with its own token directory.
/// Loaded once for the whole run (SoftHSM has one global state per process).</summary>
[SetUpFixture]
public sealed class Reference
{
    internal static TokenDir? Dir;
    internal static IPkcs11Library? Lib;
    internal static ISlot? Slot;
    internal static readonly Pkcs11InteropFactories Factories = new();

    [OneTimeSetUp]
    public void Load()
    {
        Dir = new TokenDir("direct");
        // SoftHSM reads SOFTHSM2_CONF from the native environment at C_Initialize.
        NativeEnv.Set("SOFTHSM2_CONF", Dir.Conf);
        Lib = Factories.Pkcs11LibraryFactory.LoadPkcs11Library(Factories, Paths.SoftHsm, AppType.MultiThreaded);
        Slot = Target.FindSlot(Lib, "direct");
    }

    [OneTimeTearDown]
    public void Unload()
    {
        Lib?.Dispose();
        Dir?.Dispose();
    }
}

/// <summary>
/// One way of reaching a token: a loaded module plus the processes behind it. The token is
/// SoftHSM's, or NSS softoken's for the names in <see cref="SoftokenNames"/> ("softoken/STACK",
/// see Softoken.cs): the same scenarios, compared with softoken loaded directly.
/// </summary>
internal sealed class Target : IDisposable
{
    public static readonly string[] Names =
        ["direct", "p11kit-server", "p11kit-remote", "broker-socket", "broker-stdio", "p11kit-client-broker",
         "broker-v1", "broker-v0"];

    public static readonly string[] SoftokenNames = SoftokenStack.Names.Select(n => SoftokenPrefix + n).ToArray();

    private const string SoftokenPrefix = "softoken/";

    /// <summary>The stack's name (without the softoken/ prefix).</summary>
    public string Name { get; }

    /// <summary>NSS softoken behind the stack instead of SoftHSM.</summary>
    public bool Softoken { get; }

    /// <summary>The token loaded directly, which the target is compared with.</summary>
    public ISlot ReferenceSlot => Softoken ? SoftokenDirect.Slot : Reference.Slot!;
    public IPkcs11Library ReferenceLib => Softoken ? SoftokenDirect.Lib : Reference.Lib!;
    public string ModulePath { get; private set; } = "";
    public IPkcs11Library Lib { get; private set; } = null!;
    public ISlot Slot { get; private set; } = null!;
    /// <summary>The client side speaks p11-kit's protocol version 0 (p11-kit 0.24.1 on one end), so
    /// only the mechanisms whose parameters p11-kit 0.24 can carry are usable.</summary>
    public bool Protocol0 => Name is "p11kit-server" or "p11kit-remote" or "p11kit-client-broker" or "broker-v0";

    /// <summary>
    /// The mechanisms the protocol version of this path cannot carry, hidden from the list and
    /// refused at *Init: p11-kit 0.24's set for version 0, p11-kit 0.25's for version 1 (our
    /// module offering only version 1 to our broker), none for version 2.
    /// </summary>
    public IReadOnlySet<ulong> Hidden => Softoken
        ? _softokenHidden ??= SoftokenDirect.Slot.GetMechanismList().Select(m => (ulong)m)
            .Where(m => Protocol0 ? !SoftokenDirect.CarriedByP11Kit024.Contains(m) : Name == "broker-v1" && !SoftokenDirect.CarriedByP11Kit025.Contains(m))
            .ToHashSet()
        : Protocol0 ? H.HiddenByP11Kit024 : Name == "broker-v1" ? H.HiddenByP11Kit025 : H.NothingHidden;

    private HashSet<ulong>? _softokenHidden;
    public bool IsDirect => Name == "direct";
    /// <summary>What the server process printed so far (empty without one).</summary>
    public string ServerLog => _server?.Log ?? _softoken?.ServerLog ?? "";

    private TokenDir? _dir;
    private Server? _server;
    private SoftokenStack? _softoken;
    private bool _ownsLib;

    public Target(string name)
    {
        Softoken = name.StartsWith(SoftokenPrefix, StringComparison.Ordinal);
        Name = Softoken ? name[SoftokenPrefix.Length..] : name;
    }

    public void Start()
    {
        if (Softoken)
        {
            StartSoftoken();
            return;
        }
        if (IsDirect)
        {
            ModulePath = Paths.SoftHsm;
            Lib = Reference.Lib ?? throw new InvalidOperationException("reference not loaded");
            Slot = Reference.Slot!;
            return;
        }
        string module = Name == "p11kit-client-broker" ? Paths.P11KitClient : Paths.Module();
        string? broker = Name.Contains("broker") ? Paths.Broker() : null;
        _dir = new TokenDir(Name);
        string sock = Path.Combine(_dir.Dir, "server.sock");
        string address;
        switch (Name)
        {
            case "p11kit-server":
                _server = new Server("p11-kit server", "p11-kit",
                    ["server", "-f", "-n", sock, "--provider", Paths.SoftHsm, $"pkcs11:token={Paths.TokenLabel}"], _dir.Conf, sock);
                address = "unix:path=" + sock;
                break;
            case "p11kit-remote":
                address = $"|p11-kit remote {Paths.SoftHsm}";
                break;
            case "broker-socket":
            case "p11kit-client-broker":
            case "broker-v1":
            case "broker-v0":
                string[] args = ["serve", "--module", Paths.SoftHsm, "--socket", sock];
                // P11PROXY_CONF_VERBOSE=1: the broker traces every call into its log, shown by BrokerLog.
                if (Environment.GetEnvironmentVariable("P11PROXY_CONF_VERBOSE") == "1") args = [.. args, "--verbose"];
                _server = new Server("p11proxy-broker serve", broker!, args, _dir.Conf, sock);
                address = "unix:path=" + sock;
                break;
            case "broker-stdio":
                address = $"|{broker} stdio --module {Paths.SoftHsm}";
                break;
            default:
                throw new ArgumentException(Name);
        }
        // Children spawned by a '|' address inherit the native environment: they must see this
        // target's token directory. SoftHSM in this process read its own at C_Initialize already.
        NativeEnv.Set("SOFTHSM2_CONF", _dir.Conf);
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", address);
        // broker-v1 / broker-v0: our module offers only that protocol version to our broker.
        if (Name is "broker-v1" or "broker-v0") NativeEnv.Set("P11PROXY_PROTOCOL_VERSION", Name == "broker-v1" ? "1" : "0");
        else NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        ModulePath = module;
        try
        {
            Lib = Reference.Factories.Pkcs11LibraryFactory.LoadPkcs11Library(Reference.Factories, module, AppType.MultiThreaded);
        }
        catch (Pkcs11Exception e)
        {
            Assert.Fail($"{Name}: loading {module} with P11_KIT_SERVER_ADDRESS={address} failed: {e.Method} returned {e.RV}. " +
                        $"Server output: {_server?.Log}");
        }
        _ownsLib = true;
        Slot = FindSlot(Lib, Name);
    }

    /// <summary>The softoken stack; the module is initialised first through its function list, which
    /// Pkcs11Interop's then finds initialised (CKR_CRYPTOKI_ALREADY_INITIALIZED, which it accepts).</summary>
    private void StartSoftoken()
    {
        if (IsDirect)
        {
            ModulePath = SoftokenDb.Module;
            Lib = SoftokenDirect.Lib;
            Slot = SoftokenDirect.Slot;
            return;
        }
        _softoken = new SoftokenStack(Name);
        _softoken.Start();
        ModulePath = _softoken.ModulePath;
        try
        {
            Lib = Reference.Factories.Pkcs11LibraryFactory.LoadPkcs11Library(Reference.Factories, ModulePath, AppType.MultiThreaded);
        }
        catch (Pkcs11Exception e)
        {
            Assert.Fail($"softoken/{Name}: loading {ModulePath} with P11_KIT_SERVER_ADDRESS={_softoken.Address} failed: {e.Method} " +
                        $"returned {e.RV}. Server output: {_softoken.ServerLog}");
        }
        _ownsLib = true;
        Slot = FindSlot(Lib, Name);
    }

    internal static ISlot FindSlot(IPkcs11Library lib, string name)
    {
        foreach (var slot in lib.GetSlotList(SlotsType.WithTokenPresent))
        {
            var ti = slot.GetTokenInfo();
            if (ti.Label.Trim() == Paths.TokenLabel) return slot;
        }
        Assert.Fail($"{name}: no slot with a token labelled '{Paths.TokenLabel}'");
        return null!;
    }

    public void Dispose()
    {
        if (_ownsLib)
        {
            try { Lib.Dispose(); } catch (Pkcs11Exception) { }
            _ownsLib = false;
        }
        _server?.Dispose();
        _server = null;
        _softoken?.Dispose();
        _softoken = null;
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
        if (Reference.Dir != null) NativeEnv.Set("SOFTHSM2_CONF", Reference.Dir.Conf);
        _dir?.Dispose();
        _dir = null;
    }
}

internal static class LibdlResolver
{
    /// <summary>Pkcs11Interop 5.3.0 P/Invokes dlopen/dlsym in "libdl"; Debian 12 ships only libdl.so.2
    /// (the unversioned libdl.so comes with libc6-dev). Resolve it to the versioned name.</summary>
    [System.Runtime.CompilerServices.ModuleInitializer]
    internal static void Install() =>
        NativeLibrary.SetDllImportResolver(typeof(Net.Pkcs11Interop.Common.CKR).Assembly, (name, asm, path) =>
            name == "libdl" && NativeLibrary.TryLoad("libdl.so.2", out var h) ? h : IntPtr.Zero);
}
