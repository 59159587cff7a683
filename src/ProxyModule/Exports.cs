using System.Runtime.CompilerServices;
using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The C ABI. The [UnmanagedCallersOnly] stubs are generated (Exports.g.cs) from pkcs11f.h and
/// Exports.bindings: each is the boundary between a C host and managed code, catches every
/// exception (one escaping would kill the host) and turns it into a CK_RV. What is here are the
/// few entry points whose work is local rather than a remote call.
/// </summary>
internal static unsafe partial class Exports
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static nuint Done(string name, ulong rv)
    {
        if (Log.Debug) Log.Trace($"{name} -> {Names.Rv(rv)}");
        return (nuint)rv;
    }

    // ---- entry points resolved with dlsym -------------------------------------------------------

    private static ulong GetFunctionList(CK_FUNCTION_LIST** list)
    {
        if (list == null) return CKR_ARGUMENTS_BAD;
        ModuleState.HostLoaded();
        *list = (CK_FUNCTION_LIST*)FunctionTable.Version240;
        return CKR_OK;
    }

    private static ulong GetInterfaceList(CK_INTERFACE* list, nuint* count)
    {
        ModuleState.HostLoaded();
        return FunctionTable.GetInterfaceList(list, count);
    }

    private static ulong GetInterface(byte* name, CK_VERSION* version, CK_INTERFACE** found, nuint flags)
    {
        ModuleState.HostLoaded();
        return FunctionTable.GetInterface(name, version, found, flags);
    }

    // ---- general ------------------------------------------------------------------------------------

    private static ulong Initialize(CK_C_INITIALIZE_ARGS* args)
    {
        ReadOnlySpan<byte> reserved = default;
        bool hasReserved = false;
        if (args != null)
        {
            int supplied = (args->CreateMutex != null ? 1 : 0) + (args->DestroyMutex != null ? 1 : 0) +
                           (args->LockMutex != null ? 1 : 0) + (args->UnlockMutex != null ? 1 : 0);
            if (supplied != 0 && supplied != 4)
                return CKR_ARGUMENTS_BAD;
            // We lock with the OS's primitives only; callbacks without permission to use them cannot be honoured.
            if (supplied == 4 && (args->flags & (nuint)CKF_OS_LOCKING_OK) == 0)
                return CKR_CANT_LOCK;
            // CKF_LIBRARY_CANT_CREATE_OS_THREADS needs nothing: the module never creates threads.
            if (args->pReserved != null)
            {
                // Hosts that use pReserved (p11-kit's x-init-reserved, NSS's module parameters)
                // pass a string, forwarded to the broker as p11-kit's client does. Anything else
                // is garbage: refused as a module loaded directly refuses it, and read only
                // through the kernel, since the pointer may point nowhere.
                if (!CallerMemory.TryCopyString(args->pReserved, ReservedString.MaxLength, out var text) || !ReservedString.IsText(text))
                    return CKR_ARGUMENTS_BAD;
                reserved = text.AsSpan(0, text.Length - 1);
                hasReserved = true;
            }
        }
        return ModuleState.Initialize(reserved, hasReserved);
    }

    // The 2.40 function list shows a 2.40 library, as NSS softoken's does: no message-based
    // functions (their mechanism flags dropped) and a Cryptoki version of at most 2.40.

    /// <summary>CKF_MESSAGE_ENCRYPT, _DECRYPT, _SIGN, _VERIFY and CKF_MULTI_MESSAGE: no 2.40 meaning.</summary>
    private const ulong MessageMechanismFlags = CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY | CKF_MULTI_MESSAGE;

    private static ulong GetMechanismInfo240(nuint slot, nuint type, CK_MECHANISM_INFO* info)
    {
        ulong rv = Remote.GetMechanismInfo(slot, type, info);
        if (rv == CKR_OK) info->flags &= ~(nuint)MessageMechanismFlags;
        return rv;
    }

    private static ulong GetInfo240(CK_INFO* info)
    {
        ulong rv = Remote.GetInfo(info);
        if (rv == CKR_OK && (info->cryptokiVersion.major > 2 || (info->cryptokiVersion.major == 2 && info->cryptokiVersion.minor > 40)))
            info->cryptokiVersion = new CK_VERSION { major = 2, minor = 40 };
        return rv;
    }
}
