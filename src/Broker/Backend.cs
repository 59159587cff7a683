using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// The real PKCS#11 module the broker serves: loaded once, through its 3.0 interface when it has
/// one, initialised with OS locking (at once, or later: a spare worker loads the module ahead and
/// initialises it when its client arrives), finalised at exit. Only this class and the dispatcher
/// touch its function table.
/// </summary>
internal sealed unsafe class Backend : IDisposable
{
    private Backend(string path, nint library, CK_FUNCTION_LIST_3_0* functions, bool has30)
    {
        Path = path;
        Library = library;
        Functions = functions;
        Has30 = has30;
    }

    public string Path { get; }
    public nint Library { get; }

    /// <summary>The function table; the 3.0 entries exist only when <see cref="Has30"/>.</summary>
    public CK_FUNCTION_LIST_3_0* Functions { get; }
    public bool Has30 { get; }

    /// <summary>
    /// Loads and initialises the module; <paramref name="initReserved"/>, when given, is its
    /// C_Initialize pReserved string (see <see cref="Open"/>).
    /// </summary>
    public static Backend Load(string path, string? initReserved = null)
    {
        var backend = Open(path, initReserved);
        backend.Initialize();
        return backend;
    }

    /// <summary>Whether C_Initialize has succeeded (and C_Finalize is owed).</summary>
    public bool Initialized { get; private set; }

    /// <summary>C_Initialize with OS locking; throws <see cref="BrokerException"/> saying why it failed.</summary>
    public void Initialize()
    {
        var args = new CK_C_INITIALIZE_ARGS { flags = (nuint)CKF_OS_LOCKING_OK, pReserved = _initReserved };
        var init = Functions->C_Initialize(&args);
        if (init != (nuint)CKR_OK && init != (nuint)CKR_CRYPTOKI_ALREADY_INITIALIZED)
            throw new BrokerException($"{Path}: C_Initialize failed ({Pkcs11Names.ReturnValue(init) ?? init.ToString()}); " +
                                      "check the module's own configuration (e.g. SOFTHSM2_CONF for SoftHSM" +
                                      (_initReserved is null
                                          ? "; a module that takes its configuration in pReserved, such as NSS softoken, needs --init-reserved)"
                                          : ", and the --init-reserved string)"));
        Initialized = true;
    }

    /// <summary>
    /// Loads the module and finds its function table, without initialising it.
    /// <paramref name="initReserved"/>, when given, is the pReserved string <see cref="Initialize"/>
    /// passes (NUL-terminated native memory kept for the life of the process: a module may hold on to it).
    /// </summary>
    public static Backend Open(string path, string? initReserved = null)
    {
        if (!File.Exists(path))
            throw new BrokerException($"module {path} does not exist; pass the path of a PKCS#11 module with --module");
        nint library;
        try
        {
            library = NativeLibrary.Load(path);
        }
        catch (Exception e)
        {
            throw new BrokerException($"cannot load module {path}: {e.Message}");
        }

        CK_FUNCTION_LIST_3_0* functions = null;
        bool has30 = false;
        if (NativeLibrary.TryGetExport(library, "C_GetInterface", out var getInterface))
        {
            var name = "PKCS 11\0"u8;
            var version = new CK_VERSION { major = 3, minor = 0 };
            CK_INTERFACE* found = null;
            fixed (byte* namePointer = name)
            {
                var rv = ((delegate* unmanaged<byte*, CK_VERSION*, CK_INTERFACE**, nuint, nuint>)getInterface)(namePointer, &version, &found, 0);
                if (rv == (nuint)CKR_OK && found != null && found->pFunctionList != null &&
                    ((CK_VERSION*)found->pFunctionList)->major >= 3)
                {
                    functions = (CK_FUNCTION_LIST_3_0*)found->pFunctionList;
                    has30 = true;
                }
            }
        }
        if (functions == null)
        {
            if (!NativeLibrary.TryGetExport(library, "C_GetFunctionList", out var getFunctionList))
                throw new BrokerException($"{path} is not a PKCS#11 module: it exports no C_GetFunctionList");
            void* list = null;
            var rv = ((delegate* unmanaged<void**, nuint>)getFunctionList)(&list);
            if (rv != (nuint)CKR_OK || list == null)
                throw new BrokerException($"{path}: C_GetFunctionList failed ({Pkcs11Names.ReturnValue(rv) ?? rv.ToString()})");
            functions = (CK_FUNCTION_LIST_3_0*)list;
        }

        return new Backend(path, library, functions, has30) { _initReserved = NulTerminated(initReserved) };
    }

    private void* _initReserved;

    private static void* NulTerminated(string? text)
    {
        if (text is null) return null;
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        var copy = (byte*)NativeMemory.AllocZeroed((nuint)bytes.Length + 1);
        bytes.CopyTo(new Span<byte>(copy, bytes.Length));
        return copy;
    }

    private SlotEvents? _events;

    /// <summary>The backend's slot events, shared by all its clients (a broker has one token filter).</summary>
    public SlotEvents Events(TokenFilter filter, ProcessLog log)
    {
        lock (this) return _events ??= new SlotEvents(this, filter, log);
    }

    public void Dispose()
    {
        // The library stays mapped: modules often register atexit handlers and threads.
        if (Initialized)
            Functions->C_Finalize(null);
        Initialized = false;
    }
}

/// <summary>A start-up or configuration error, worded for the person running the broker.</summary>
internal sealed class BrokerException(string message) : Exception(message);
