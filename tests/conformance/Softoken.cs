using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace P11Proxy.Conformance;

/// <summary>
/// NSS softoken, a PKCS#11 3.0 module on every Debian machine (libnss3). It needs its database named
/// in C_Initialize's pReserved; <see cref="InitString"/> is that string for a throw-away database
/// made with certutil (empty password unless one is given).
/// </summary>
internal sealed class SoftokenDb : IDisposable
{
    public const string Module = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

    public string Dir { get; }

    /// <summary>The C_Initialize pReserved string that points softoken at this database.</summary>
    public string InitString { get; }

    public SoftokenDb(string name, string? password = null, string? tokenLabel = null)
    {
        Dir = Directory.CreateTempSubdirectory($"p11softoken-{name}-").FullName;
        string[] args = password is null
            ? ["-N", "--empty-password", "-d", $"sql:{Dir}"]
            : ["-N", "-f", WritePasswordFile(password), "-d", $"sql:{Dir}"];
        var (rc, output) = Proc.Run("certutil", args, new());
        if (rc != 0) Assert.Fail($"certutil -N failed ({rc}): {output}");
        // dbTokenDescription names the database token (32 characters at most, as any token label).
        InitString = $"configdir='sql:{Dir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=" +
                     (tokenLabel is null ? "" : $" dbTokenDescription='{tokenLabel}'");
    }

    private string WritePasswordFile(string password)
    {
        string file = Path.Combine(Dir, "password");
        File.WriteAllText(file, password + "\n");
        return file;
    }

    public void Dispose()
    {
        try { Directory.Delete(Dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Small C helpers of the tests (native/*.c), compiled on first use with clang.</summary>
internal static class NativeHelpers
{
    private static readonly object Gate = new();
    private static readonly Dictionary<string, string> Built = new();

    /// <summary>Builds native/<paramref name="source"/> into a shared library and returns its path.</summary>
    public static string SharedLibrary(string source)
    {
        lock (Gate)
        {
            if (Built.TryGetValue(source, out var built)) return built;
            string input = Path.Combine(AppContext.BaseDirectory, "native", source);
            string output = Path.Combine(Directory.CreateTempSubdirectory("p11native-").FullName, Path.ChangeExtension(source, ".so"));
            var (rc, log) = Proc.Run("clang", ["-shared", "-fPIC", "-O1", "-Wall", "-o", output, input,
                "-I/usr/include/nss", "-I/usr/include/nspr", "-ldl"], new());
            if (rc != 0) Assert.Fail($"clang could not build {source} ({rc}): {log}");
            Built[source] = output;
            return output;
        }
    }
}

/// <summary>
/// NSS softoken loaded directly in this process, initialised once with its own database for the
/// whole run and never finalised (several fixtures use it; a module has one state per process).
/// The database token is labelled <see cref="TokenLabel"/> and has user PIN <see cref="Pin"/>.
/// </summary>
internal static class SoftokenDirect
{
    public const string TokenLabel = "conf";
    public const string Pin = "1234";

    private static readonly object Gate = new();
    private static SoftokenDb? _db;
    private static Module3? _module;

    public static SoftokenDb Db
    {
        get { Load(); return _db!; }
    }

    private static IPkcs11Library? _lib;
    private static ISlot? _slot;

    /// <summary>
    /// The same softoken through Pkcs11Interop (its 2.40 function list), for the 2.40 scenarios of
    /// ConformanceTests. Initialised already (by <see cref="Module"/>), so Pkcs11Interop's
    /// C_Initialize gets CKR_CRYPTOKI_ALREADY_INITIALIZED, which it accepts; never disposed, since
    /// its C_Finalize would end softoken for every user in this process.
    /// </summary>
    public static IPkcs11Library Lib
    {
        get
        {
            lock (Gate)
            {
                Load();
                _lib ??= Reference.Factories.Pkcs11LibraryFactory.LoadPkcs11Library(Reference.Factories, SoftokenDb.Module, AppType.MultiThreaded);
                return _lib;
            }
        }
    }

    public static ISlot Slot
    {
        get
        {
            var lib = Lib;
            lock (Gate) return _slot ??= Target.FindSlot(lib, "softoken/direct");
        }
    }

    /// <summary>
    /// The mechanisms of softoken's database token that p11-kit 0.24.1's client carries (protocol
    /// version 0). Measured: softoken's list through p11-kit-client.so 0.24.1 against our broker;
    /// our module offering version 0 lists exactly the same.
    /// </summary>
    public static readonly HashSet<ulong> CarriedByP11Kit024 =
    [
        0x0, 0x1, 0x10, 0x100, 0x101, 0x103, 0x1040, 0x1041, 0x1042, 0x1080, 0x1081, 0x1083, 0x11, 0x12, 0x120, 0x121, 0x123,
        0x130, 0x131, 0x132, 0x134, 0x140, 0x141, 0x143, 0x20, 0x2000, 0x201, 0x211, 0x221, 0x251, 0x261, 0x271, 0x3, 0x350,
        0x4, 0x40, 0x41, 0x42, 0x5, 0x6, 0x9, 0xd,
    ];

    /// <summary>
    /// What version 1 carries of that list (p11-kit 0.25.0-0.25.5's tables, as our module offering
    /// version 1 applies them): AES/DES IV modes, CTR, GCM, CMAC, ECDH, the PSS family, SHA-224.
    /// </summary>
    public static readonly HashSet<ulong> CarriedByP11Kit025 =
    [
        0x0, 0x1, 0x10, 0x100, 0x101, 0x103, 0x1040, 0x1041, 0x1042, 0x1043, 0x1044, 0x1045, 0x1046, 0x1050, 0x1080, 0x1081,
        0x1082, 0x1083, 0x1084, 0x1085, 0x1086, 0x1087, 0x1089, 0x108a, 0x108b, 0x11, 0x12, 0x120, 0x121, 0x122, 0x123, 0x125,
        0x130, 0x131, 0x132, 0x133, 0x134, 0x135, 0x136, 0x140, 0x141, 0x143, 0x20, 0x2000, 0x201, 0x21, 0x211, 0x221, 0x222,
        0x251, 0x252, 0x256, 0x257, 0x261, 0x262, 0x271, 0x272, 0x3, 0x350, 0x4, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46,
        0x47, 0x5, 0x6, 0x9, 0xd, 0xe,
    ];

    /// <summary>The module through its 3.0 function list, initialised.</summary>
    public static Module3 Module
    {
        get { Load(); return _module!; }
    }

    private static void Load()
    {
        lock (Gate)
        {
            if (_module is not null) return;
            _db = new SoftokenDb("direct", Pin, TokenLabel);
            _module = Module3.Load(SoftokenDb.Module);
            ulong rv = _module.Initialize(_db.InitString);
            Assert.That(rv, Is.EqualTo(Module3.CKR_OK), $"softoken C_Initialize with its database: 0x{rv:x}");
            AppDomain.CurrentDomain.ProcessExit += (_, _) => _db.Dispose();
        }
    }
}

/// <summary>
/// One way of reaching NSS softoken: directly, or through a stack we build or interoperate with.
/// The p11-kit stacks get softoken through native/recordingmodule.c, which hands it its database
/// string (`p11-kit server --provider` has no way to pass one, and root's p11-kit reads module
/// configs with x-init-reserved only from /etc); our broker gets it with --init-reserved.
/// </summary>
internal sealed class SoftokenStack : IDisposable
{
    public static readonly string[] Names =
        ["direct", "p11kit-server", "p11kit-remote", "broker-socket", "broker-stdio", "p11kit-client-broker", "broker-v1", "broker-v0"];

    public string Name { get; }
    public SoftokenDb? Db { get; private set; }
    public string ModulePath { get; private set; } = "";
    public string Address { get; private set; } = "";
    private Server? _server;
    private string? _dir;

    public SoftokenStack(string name) => Name = name;

    public bool IsDirect => Name == "direct";

    /// <summary>A p11-kit 0.24 peer or protocol version 0 on one side: no PKCS #11 3.0 calls travel.</summary>
    public bool Protocol0 => Name is "p11kit-server" or "p11kit-remote" or "broker-v0";

    /// <summary>p11-kit 0.24's client module offers no 3.0 interface at all.</summary>
    public bool No30Interface => Name == "p11kit-client-broker";

    /// <summary>Starts the server side and sets the environment the module to load needs.</summary>
    public void Start()
    {
        if (IsDirect)
        {
            ModulePath = SoftokenDb.Module;
            return;
        }
        Db = new SoftokenDb(Name, SoftokenDirect.Pin, SoftokenDirect.TokenLabel);
        _dir = Directory.CreateTempSubdirectory($"p11softoken-{Name}-").FullName;
        string socket = Path.Combine(_dir, "server.sock");
        string shim = NativeHelpers.SharedLibrary("recordingmodule.c");
        var shimEnv = new Dictionary<string, string>
        {
            ["RECORDING_MODULE_TARGET"] = SoftokenDb.Module,
            ["RECORDING_MODULE_INIT_RESERVED"] = Db.InitString,
        };
        foreach (var (name, value) in shimEnv) NativeEnv.Set(name, value); // children of '|' addresses inherit them
        string broker = Name.Contains("broker") ? Paths.Broker() : "";
        string[] brokerArgs = ["--module", SoftokenDb.Module, "--init-reserved", Db.InitString];
        switch (Name)
        {
            case "p11kit-server":
                _server = new Server("p11-kit server", "p11-kit",
                    ["server", "-f", "-n", socket, "--provider", shim, $"pkcs11:token={SoftokenDirect.TokenLabel}"], "/nonexistent", socket, shimEnv);
                Address = "unix:path=" + socket;
                break;
            case "p11kit-remote":
                Address = $"|p11-kit remote {shim}";
                break;
            case "broker-stdio":
                // The address is split as p11-kit splits it: inside double quotes the string's single quotes stay.
                Address = $"|{broker} stdio --module {SoftokenDb.Module} --init-reserved \"{Db.InitString}\"";
                break;
            default:
                _server = new Server("p11proxy-broker serve", broker, ["serve", .. brokerArgs, "--socket", socket], "/nonexistent", socket);
                Address = "unix:path=" + socket;
                break;
        }
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", Address);
        if (Name is "broker-v1" or "broker-v0") NativeEnv.Set("P11PROXY_PROTOCOL_VERSION", Name == "broker-v1" ? "1" : "0");
        else NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        ModulePath = Name == "p11kit-client-broker" ? Paths.P11KitClient : Paths.Module();
    }

    public string ServerLog => _server?.Log ?? "";

    public void Dispose()
    {
        _server?.Dispose();
        _server = null;
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
        NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        NativeEnv.Unset("RECORDING_MODULE_TARGET");
        NativeEnv.Unset("RECORDING_MODULE_INIT_RESERVED");
        Db?.Dispose();
        if (_dir is not null) try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
