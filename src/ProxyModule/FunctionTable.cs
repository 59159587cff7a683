using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// CK_FUNCTION_LIST (2.40) and CK_FUNCTION_LIST_3_0, built once in native memory that never moves
/// or gets freed, so hosts may keep the pointers for the life of the process. Layout: a CK_VERSION
/// (padded to 8 bytes) followed by the function pointers in the standard's order.
/// </summary>
internal static unsafe class FunctionTable
{
    private static readonly void* List240;
    private static readonly void* List300;
    private static readonly CK_INTERFACE* Interfaces;
    private const int InterfaceCount = 2;

    public static void* Version240 => List240;

    [DllImport("p11proxy_native", EntryPoint = "p11proxy_gate_wrap")]
    private static extern int p11proxy_gate_wrap(nint* managed, nint* table, int count);

    private static ReadOnlySpan<byte> InterfaceName => "PKCS 11\0"u8;

    private const int GetInfoIndex = 2, GetMechanismInfoIndex = 8;

    static FunctionTable()
    {
        nint[] pointers =
        [
            (nint)(delegate* unmanaged<void*, nuint>)&Exports.C_Initialize,
            (nint)(delegate* unmanaged<void*, nuint>)&Exports.C_Finalize,
            (nint)(delegate* unmanaged<CK_INFO*, nuint>)&Exports.C_GetInfo,
            (nint)(delegate* unmanaged<void**, nuint>)&Exports.C_GetFunctionList,
            (nint)(delegate* unmanaged<byte, nuint*, nuint*, nuint>)&Exports.C_GetSlotList,
            (nint)(delegate* unmanaged<nuint, CK_SLOT_INFO*, nuint>)&Exports.C_GetSlotInfo,
            (nint)(delegate* unmanaged<nuint, CK_TOKEN_INFO*, nuint>)&Exports.C_GetTokenInfo,
            (nint)(delegate* unmanaged<nuint, nuint*, nuint*, nuint>)&Exports.C_GetMechanismList,
            (nint)(delegate* unmanaged<nuint, nuint, CK_MECHANISM_INFO*, nuint>)&Exports.C_GetMechanismInfo,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint>)&Exports.C_InitToken,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_InitPIN,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint, nuint>)&Exports.C_SetPIN,
            (nint)(delegate* unmanaged<nuint, nuint, void*, void*, nuint*, nuint>)&Exports.C_OpenSession,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_CloseSession,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_CloseAllSessions,
            (nint)(delegate* unmanaged<nuint, CK_SESSION_INFO*, nuint>)&Exports.C_GetSessionInfo,
            (nint)(delegate* unmanaged<nuint, byte*, nuint*, nuint>)&Exports.C_GetOperationState,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint, nuint, nuint>)&Exports.C_SetOperationState,
            (nint)(delegate* unmanaged<nuint, nuint, byte*, nuint, nuint>)&Exports.C_Login,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_Logout,
            (nint)(delegate* unmanaged<nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint>)&Exports.C_CreateObject,
            (nint)(delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint>)&Exports.C_CopyObject,
            (nint)(delegate* unmanaged<nuint, nuint, nuint>)&Exports.C_DestroyObject,
            (nint)(delegate* unmanaged<nuint, nuint, nuint*, nuint>)&Exports.C_GetObjectSize,
            (nint)(delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint>)&Exports.C_GetAttributeValue,
            (nint)(delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint>)&Exports.C_SetAttributeValue,
            (nint)(delegate* unmanaged<nuint, CK_ATTRIBUTE*, nuint, nuint>)&Exports.C_FindObjectsInit,
            (nint)(delegate* unmanaged<nuint, nuint*, nuint, nuint*, nuint>)&Exports.C_FindObjects,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_FindObjectsFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_EncryptInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_Encrypt,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_EncryptUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint*, nuint>)&Exports.C_EncryptFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_DecryptInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_Decrypt,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_DecryptUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint*, nuint>)&Exports.C_DecryptFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint>)&Exports.C_DigestInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_Digest,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_DigestUpdate,
            (nint)(delegate* unmanaged<nuint, nuint, nuint>)&Exports.C_DigestKey,
            (nint)(delegate* unmanaged<nuint, byte*, nuint*, nuint>)&Exports.C_DigestFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_SignInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_Sign,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_SignUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint*, nuint>)&Exports.C_SignFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_SignRecoverInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_SignRecover,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_VerifyInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint, nuint>)&Exports.C_Verify,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_VerifyUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_VerifyFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_VerifyRecoverInit,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_VerifyRecover,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_DigestEncryptUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_DecryptDigestUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_SignEncryptUpdate,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_DecryptVerifyUpdate,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, CK_ATTRIBUTE*, nuint, nuint*, nuint>)&Exports.C_GenerateKey,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, CK_ATTRIBUTE*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint*, nuint>)&Exports.C_GenerateKeyPair,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint, byte*, nuint*, nuint>)&Exports.C_WrapKey,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, byte*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint>)&Exports.C_UnwrapKey,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint>)&Exports.C_DeriveKey,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_SeedRandom,
            (nint)(delegate* unmanaged<nuint, byte*, nuint, nuint>)&Exports.C_GenerateRandom,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_GetFunctionStatus,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_CancelFunction,
            (nint)(delegate* unmanaged<nuint, nuint*, void*, nuint>)&Exports.C_WaitForSlotEvent,
            // PKCS #11 3.0 additions
            (nint)(delegate* unmanaged<CK_INTERFACE*, nuint*, nuint>)&Exports.C_GetInterfaceList,
            (nint)(delegate* unmanaged<byte*, CK_VERSION*, CK_INTERFACE**, nuint, nuint>)&Exports.C_GetInterface,
            (nint)(delegate* unmanaged<nuint, nuint, byte*, nuint, byte*, nuint, nuint>)&Exports.C_LoginUser,
            (nint)(delegate* unmanaged<nuint, nuint, nuint>)&Exports.C_SessionCancel,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_MessageEncryptInit,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_EncryptMessage,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, nuint>)&Exports.C_EncryptMessageBegin,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint, nuint>)&Exports.C_EncryptMessageNext,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_MessageEncryptFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_MessageDecryptInit,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_DecryptMessage,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, nuint>)&Exports.C_DecryptMessageBegin,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint, nuint>)&Exports.C_DecryptMessageNext,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_MessageDecryptFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_MessageSignInit,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_SignMessage,
            (nint)(delegate* unmanaged<nuint, void*, nuint, nuint>)&Exports.C_SignMessageBegin,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint>)&Exports.C_SignMessageNext,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_MessageSignFinal,
            (nint)(delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint>)&Exports.C_MessageVerifyInit,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, nuint>)&Exports.C_VerifyMessage,
            (nint)(delegate* unmanaged<nuint, void*, nuint, nuint>)&Exports.C_VerifyMessageBegin,
            (nint)(delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, nuint>)&Exports.C_VerifyMessageNext,
            (nint)(delegate* unmanaged<nuint, nuint>)&Exports.C_MessageVerifyFinal,
            // The 2.40 list's own entries (after the 3.0 list): a 2.40 caller is shown a 2.40 library.
            (nint)(delegate* unmanaged<CK_INFO*, nuint>)&Exports.C_GetInfo240,
            (nint)(delegate* unmanaged<nuint, nuint, CK_MECHANISM_INFO*, nuint>)&Exports.C_GetMechanismInfo240,
        ];
        if (pointers.Length != Pkcs11Abi.FunctionCount30 + 2)
            throw new InvalidOperationException($"function table has {pointers.Length} entries, expected {Pkcs11Abi.FunctionCount30 + 2}");

        // Every entry goes through the fork gate (native/forkgate.c).
        var gated = new nint[pointers.Length];
        fixed (nint* managed = pointers)
        fixed (nint* entries = gated)
        {
            if (p11proxy_gate_wrap(managed, entries, pointers.Length) != 0)
                throw new InvalidOperationException("the fork gate refused the function table");
        }
        var entries240 = gated.AsSpan(0, Pkcs11Abi.FunctionCount240).ToArray();
        entries240[GetInfoIndex] = gated[Pkcs11Abi.FunctionCount30];
        entries240[GetMechanismInfoIndex] = gated[Pkcs11Abi.FunctionCount30 + 1];
        List240 = Build(entries240, 2, 40);
        List300 = Build(gated.AsSpan(0, Pkcs11Abi.FunctionCount30), 3, 0);

        // "PKCS 11" 3.0 first (the default), then 2.40 for callers that ask for it by version.
        var name = (byte*)NativeMemory.Alloc((nuint)InterfaceName.Length);
        InterfaceName.CopyTo(new Span<byte>(name, InterfaceName.Length));
        Interfaces = (CK_INTERFACE*)NativeMemory.AllocZeroed((nuint)(InterfaceCount * sizeof(CK_INTERFACE)));
        Interfaces[0] = new CK_INTERFACE { pInterfaceName = name, pFunctionList = List300, flags = 0 };
        Interfaces[1] = new CK_INTERFACE { pInterfaceName = name, pFunctionList = List240, flags = 0 };
    }

    private static void* Build(ReadOnlySpan<nint> functions, byte major, byte minor)
    {
        var block = (byte*)NativeMemory.AllocZeroed((nuint)(8 + functions.Length * sizeof(nint)));
        block[0] = major;
        block[1] = minor;
        functions.CopyTo(new Span<nint>(block + 8, functions.Length));
        return block;
    }

    public static ulong GetInterfaceList(CK_INTERFACE* list, nuint* count)
    {
        if (count == null) return CKR_ARGUMENTS_BAD;
        if (list == null)
        {
            *count = InterfaceCount;
            return CKR_OK;
        }
        if (*count < InterfaceCount)
        {
            *count = InterfaceCount;
            return CKR_BUFFER_TOO_SMALL;
        }
        for (int i = 0; i < InterfaceCount; i++)
            list[i] = Interfaces[i];
        *count = InterfaceCount;
        return CKR_OK;
    }

    /// <summary>
    /// We do not claim CKF_INTERFACE_FORK_SAFE: like p11-kit, a forked child must call C_Initialize
    /// again. A request with flags we do not offer finds no interface (CKR_ARGUMENTS_BAD, per the spec).
    /// </summary>
    public static ulong GetInterface(byte* name, CK_VERSION* version, CK_INTERFACE** found, nuint flags)
    {
        if (found == null) return CKR_ARGUMENTS_BAD;
        for (int i = 0; i < InterfaceCount; i++)
        {
            var candidate = &Interfaces[i];
            if (name != null && !MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name).SequenceEqual(InterfaceName[..^1]))
                continue;
            var listVersion = (CK_VERSION*)candidate->pFunctionList;
            if (version != null && (version->major != listVersion->major || version->minor != listVersion->minor))
                continue;
            if ((candidate->flags & flags) != flags)
                continue;
            *found = candidate;
            return CKR_OK;
        }
        return CKR_ARGUMENTS_BAD;
    }
}
