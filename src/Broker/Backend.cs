using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// The real PKCS#11 module the broker serves: loaded once, through its 3.0 interface when it has
/// one, initialised with OS locking, finalised at exit. Only this class and the dispatcher touch
/// its function table.
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
    /// C_Initialize pReserved string (NUL-terminated, kept for the life of the process: a module
    /// may hold on to it).
    /// </summary>
    public static Backend Load(string path, string? initReserved = null)
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

        var args = new CK_C_INITIALIZE_ARGS { flags = (nuint)CKF_OS_LOCKING_OK, pReserved = NulTerminated(initReserved) };
        var init = functions->C_Initialize(&args);
        if (init != (nuint)CKR_OK && init != (nuint)CKR_CRYPTOKI_ALREADY_INITIALIZED)
            throw new BrokerException($"{path}: C_Initialize failed ({Pkcs11Names.ReturnValue(init) ?? init.ToString()}); " +
                                      "check the module's own configuration (e.g. SOFTHSM2_CONF for SoftHSM" +
                                      (initReserved is null
                                          ? "; a module that takes its configuration in pReserved, such as NSS softoken, needs --init-reserved)"
                                          : ", and the --init-reserved string)"));
        return new Backend(path, library, functions, has30);
    }

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
    public SlotEvents Events(TokenFilter filter, BrokerLog log)
    {
        lock (this) return _events ??= new SlotEvents(this, filter, log);
    }

    public void Dispose()
    {
        // The library stays mapped: modules often register atexit handlers and threads.
        Functions->C_Finalize(null);
    }
}

/// <summary>A start-up or configuration error, worded for the person running the broker.</summary>
internal sealed class BrokerException(string message) : Exception(message);
