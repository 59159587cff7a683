using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;
using Id = P11Proxy.Wire.RpcCallId;

namespace P11Proxy.Module;

/// <summary>
/// The C ABI. Every function here is the boundary between a C host and managed code: it catches
/// every exception (one escaping would kill the host) and turns it into a CK_RV.
/// </summary>
internal static unsafe class Exports
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static nuint Done(string name, ulong rv)
    {
        if (Log.Debug) Log.Trace($"{name} -> {Names.Rv(rv)}");
        return (nuint)rv;
    }

    // ---- entry points resolved with dlsym -------------------------------------------------------

    [UnmanagedCallersOnly(EntryPoint = "C_GetFunctionList")]
    public static nuint C_GetFunctionList(void** list)
    {
        try
        {
            if (list == null) return (nuint)CKR_ARGUMENTS_BAD;
            ModuleState.HostLoaded();
            *list = FunctionTable.Version240;
            return (nuint)CKR_OK;
        }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetFunctionList), e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "C_GetInterfaceList")]
    public static nuint C_GetInterfaceList(CK_INTERFACE* list, nuint* count)
    {
        try
        {
            ModuleState.HostLoaded();
            return (nuint)FunctionTable.GetInterfaceList(list, count);
        }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetInterfaceList), e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "C_GetInterface")]
    public static nuint C_GetInterface(byte* name, CK_VERSION* version, CK_INTERFACE** found, nuint flags)
    {
        try
        {
            ModuleState.HostLoaded();
            return (nuint)FunctionTable.GetInterface(name, version, found, flags);
        }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetInterface), e); }
    }

    // ---- general ------------------------------------------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_Initialize(void* args)
    {
        try { return Done(nameof(C_Initialize), Initialize((CK_C_INITIALIZE_ARGS*)args)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Initialize), e); }
    }

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

    [UnmanagedCallersOnly]
    public static nuint C_Finalize(void* reserved)
    {
        try { return Done(nameof(C_Finalize), reserved != null ? CKR_ARGUMENTS_BAD : ModuleState.Finalize()); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Finalize), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetInfo(CK_INFO* info)
    {
        try { return Done(nameof(C_GetInfo), Remote.GetInfo(info)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetSlotList(byte tokenPresent, nuint* list, nuint* count)
    {
        try { return Done(nameof(C_GetSlotList), Remote.GetSlotList(tokenPresent, list, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetSlotList), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetSlotInfo(nuint slot, CK_SLOT_INFO* info)
    {
        try { return Done(nameof(C_GetSlotInfo), Remote.GetSlotInfo(slot, info)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetSlotInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetTokenInfo(nuint slot, CK_TOKEN_INFO* info)
    {
        try { return Done(nameof(C_GetTokenInfo), Remote.GetTokenInfo(slot, info)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetTokenInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetMechanismList(nuint slot, nuint* list, nuint* count)
    {
        try { return Done(nameof(C_GetMechanismList), Remote.GetMechanismList(slot, list, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetMechanismList), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetMechanismInfo(nuint slot, nuint type, CK_MECHANISM_INFO* info)
    {
        try { return Done(nameof(C_GetMechanismInfo), Remote.GetMechanismInfo(slot, type, info)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetMechanismInfo), e); }
    }

    // The 2.40 function list shows a 2.40 library, as NSS softoken's does: no message-based
    // functions (their mechanism flags dropped) and a Cryptoki version of at most 2.40.

    /// <summary>CKF_MESSAGE_ENCRYPT, _DECRYPT, _SIGN, _VERIFY and CKF_MULTI_MESSAGE: no 2.40 meaning.</summary>
    private const ulong MessageMechanismFlags = CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY | CKF_MULTI_MESSAGE;

    [UnmanagedCallersOnly]
    public static nuint C_GetMechanismInfo240(nuint slot, nuint type, CK_MECHANISM_INFO* info)
    {
        try
        {
            ulong rv = Remote.GetMechanismInfo(slot, type, info);
            if (rv == CKR_OK) info->flags &= ~(nuint)MessageMechanismFlags;
            return Done(nameof(C_GetMechanismInfo), rv);
        }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetMechanismInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetInfo240(CK_INFO* info)
    {
        try
        {
            ulong rv = Remote.GetInfo(info);
            if (rv == CKR_OK && (info->cryptokiVersion.major > 2 || (info->cryptokiVersion.major == 2 && info->cryptokiVersion.minor > 40)))
                info->cryptokiVersion = new CK_VERSION { major = 2, minor = 40 };
            return Done(nameof(C_GetInfo), rv);
        }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_InitToken(nuint slot, byte* pin, nuint pinLength, byte* label)
    {
        try { return Done(nameof(C_InitToken), Remote.InitToken(slot, pin, pinLength, label)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_InitToken), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_InitPIN(nuint session, byte* pin, nuint pinLength)
    {
        try { return Done(nameof(C_InitPIN), Remote.Data(Id.C_InitPIN, session, pin, pinLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_InitPIN), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SetPIN(nuint session, byte* oldPin, nuint oldLength, byte* newPin, nuint newLength)
    {
        try { return Done(nameof(C_SetPIN), Remote.DataData(Id.C_SetPIN, session, oldPin, oldLength, newPin, newLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SetPIN), e); }
    }

    // ---- sessions ---------------------------------------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_OpenSession(nuint slot, nuint flags, void* application, void* notify, nuint* session)
    {
        // Notification callbacks cannot cross the wire (p11-kit drops them too); sessions work without.
        try { return Done(nameof(C_OpenSession), Remote.OpenSession(slot, flags, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_OpenSession), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_CloseSession(nuint session)
    {
        try { return Done(nameof(C_CloseSession), Remote.CloseSession(session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_CloseSession), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_CloseAllSessions(nuint slot)
    {
        try { return Done(nameof(C_CloseAllSessions), Remote.CloseAllSessions(slot)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_CloseAllSessions), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetSessionInfo(nuint session, CK_SESSION_INFO* info)
    {
        try { return Done(nameof(C_GetSessionInfo), Remote.GetSessionInfo(session, info)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetSessionInfo), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetOperationState(nuint session, byte* state, nuint* stateLength)
    {
        try { return Done(nameof(C_GetOperationState), Remote.ToData(Id.C_GetOperationState, session, state, stateLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetOperationState), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SetOperationState(nuint session, byte* state, nuint stateLength, nuint encryptionKey, nuint authenticationKey)
    {
        try { return Done(nameof(C_SetOperationState), Remote.SetOperationState(session, state, stateLength, encryptionKey, authenticationKey)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SetOperationState), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Login(nuint session, nuint userType, byte* pin, nuint pinLength)
    {
        try { return Done(nameof(C_Login), Remote.Login(session, userType, pin, pinLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Login), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Logout(nuint session)
    {
        try { return Done(nameof(C_Logout), Remote.Session(Id.C_Logout, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Logout), e); }
    }

    // ---- objects ----------------------------------------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_CreateObject(nuint session, CK_ATTRIBUTE* template, nuint count, nuint* handle)
    {
        try { return Done(nameof(C_CreateObject), Remote.CreateObject(Id.C_CreateObject, session, null, template, count, handle)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_CreateObject), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_CopyObject(nuint session, nuint source, CK_ATTRIBUTE* template, nuint count, nuint* handle)
    {
        try { return Done(nameof(C_CopyObject), Remote.CreateObject(Id.C_CopyObject, session, source, template, count, handle)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_CopyObject), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DestroyObject(nuint session, nuint handle)
    {
        try { return Done(nameof(C_DestroyObject), Remote.SessionHandle(Id.C_DestroyObject, session, handle)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DestroyObject), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetObjectSize(nuint session, nuint handle, nuint* size)
    {
        try { return Done(nameof(C_GetObjectSize), Remote.GetObjectSize(session, handle, size)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetObjectSize), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetAttributeValue(nuint session, nuint handle, CK_ATTRIBUTE* template, nuint count)
    {
        try { return Done(nameof(C_GetAttributeValue), Remote.GetAttributeValue(session, handle, template, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GetAttributeValue), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SetAttributeValue(nuint session, nuint handle, CK_ATTRIBUTE* template, nuint count)
    {
        try { return Done(nameof(C_SetAttributeValue), Remote.Template(Id.C_SetAttributeValue, session, handle, template, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SetAttributeValue), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_FindObjectsInit(nuint session, CK_ATTRIBUTE* template, nuint count)
    {
        try { return Done(nameof(C_FindObjectsInit), Remote.Template(Id.C_FindObjectsInit, session, null, template, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_FindObjectsInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_FindObjects(nuint session, nuint* handles, nuint maxCount, nuint* count)
    {
        try { return Done(nameof(C_FindObjects), Remote.FindObjects(session, handles, maxCount, count)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_FindObjects), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_FindObjectsFinal(nuint session)
    {
        try { return Done(nameof(C_FindObjectsFinal), Remote.Session(Id.C_FindObjectsFinal, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_FindObjectsFinal), e); }
    }

    // ---- encryption, decryption, digests, signatures ------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_EncryptInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_EncryptInit), Remote.Init(Id.C_EncryptInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Encrypt(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_Encrypt), Remote.DataToData(Id.C_Encrypt, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Encrypt), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_EncryptUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_EncryptUpdate), Remote.DataToData(Id.C_EncryptUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_EncryptFinal(nuint session, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_EncryptFinal), Remote.ToData(Id.C_EncryptFinal, session, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_DecryptInit), Remote.Init(Id.C_DecryptInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Decrypt(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_Decrypt), Remote.DataToData(Id.C_Decrypt, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Decrypt), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DecryptUpdate), Remote.DataToData(Id.C_DecryptUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptFinal(nuint session, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DecryptFinal), Remote.ToData(Id.C_DecryptFinal, session, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DigestInit(nuint session, CK_MECHANISM* mechanism)
    {
        try { return Done(nameof(C_DigestInit), Remote.Init(Id.C_DigestInit, session, mechanism, 0, hasKey: false)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DigestInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Digest(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_Digest), Remote.DataToData(Id.C_Digest, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Digest), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DigestUpdate(nuint session, byte* data, nuint dataLength)
    {
        try { return Done(nameof(C_DigestUpdate), Remote.Data(Id.C_DigestUpdate, session, data, dataLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DigestUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DigestKey(nuint session, nuint key)
    {
        try { return Done(nameof(C_DigestKey), Remote.SessionHandle(Id.C_DigestKey, session, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DigestKey), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DigestFinal(nuint session, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DigestFinal), Remote.ToData(Id.C_DigestFinal, session, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DigestFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_SignInit), Remote.Init(Id.C_SignInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Sign(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_Sign), Remote.DataToData(Id.C_Sign, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Sign), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignUpdate(nuint session, byte* data, nuint dataLength)
    {
        try { return Done(nameof(C_SignUpdate), Remote.Data(Id.C_SignUpdate, session, data, dataLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignFinal(nuint session, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_SignFinal), Remote.ToData(Id.C_SignFinal, session, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignRecoverInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_SignRecoverInit), Remote.Init(Id.C_SignRecoverInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignRecoverInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignRecover(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_SignRecover), Remote.DataToData(Id.C_SignRecover, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignRecover), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_VerifyInit), Remote.Init(Id.C_VerifyInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_Verify(nuint session, byte* data, nuint dataLength, byte* signature, nuint signatureLength)
    {
        try { return Done(nameof(C_Verify), Remote.DataData(Id.C_Verify, session, data, dataLength, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_Verify), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyUpdate(nuint session, byte* data, nuint dataLength)
    {
        try { return Done(nameof(C_VerifyUpdate), Remote.Data(Id.C_VerifyUpdate, session, data, dataLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyFinal(nuint session, byte* signature, nuint signatureLength)
    {
        try { return Done(nameof(C_VerifyFinal), Remote.Data(Id.C_VerifyFinal, session, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyRecoverInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_VerifyRecoverInit), Remote.Init(Id.C_VerifyRecoverInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyRecoverInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyRecover(nuint session, byte* signature, nuint signatureLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_VerifyRecover), Remote.DataToData(Id.C_VerifyRecover, session, signature, signatureLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyRecover), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DigestEncryptUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DigestEncryptUpdate), Remote.DataToData(Id.C_DigestEncryptUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DigestEncryptUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptDigestUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DecryptDigestUpdate), Remote.DataToData(Id.C_DecryptDigestUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptDigestUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignEncryptUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_SignEncryptUpdate), Remote.DataToData(Id.C_SignEncryptUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignEncryptUpdate), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptVerifyUpdate(nuint session, byte* data, nuint dataLength, byte* output, nuint* outputLength)
    {
        try { return Done(nameof(C_DecryptVerifyUpdate), Remote.DataToData(Id.C_DecryptVerifyUpdate, session, data, dataLength, output, outputLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptVerifyUpdate), e); }
    }

    // ---- keys and random ------------------------------------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_GenerateKey(nuint session, CK_MECHANISM* mechanism, CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        try { return Done(nameof(C_GenerateKey), Remote.GenerateKey(session, mechanism, template, count, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GenerateKey), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GenerateKeyPair(nuint session, CK_MECHANISM* mechanism, CK_ATTRIBUTE* publicTemplate, nuint publicCount,
        CK_ATTRIBUTE* privateTemplate, nuint privateCount, nuint* publicKey, nuint* privateKey)
    {
        try { return Done(nameof(C_GenerateKeyPair), Remote.GenerateKeyPair(session, mechanism, publicTemplate, publicCount, privateTemplate, privateCount, publicKey, privateKey)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GenerateKeyPair), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_WrapKey(nuint session, CK_MECHANISM* mechanism, nuint wrappingKey, nuint key, byte* wrapped, nuint* wrappedLength)
    {
        try { return Done(nameof(C_WrapKey), Remote.WrapKey(session, mechanism, wrappingKey, key, wrapped, wrappedLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_WrapKey), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_UnwrapKey(nuint session, CK_MECHANISM* mechanism, nuint unwrappingKey, byte* wrapped, nuint wrappedLength,
        CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        try { return Done(nameof(C_UnwrapKey), Remote.UnwrapKey(session, mechanism, unwrappingKey, wrapped, wrappedLength, template, count, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_UnwrapKey), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DeriveKey(nuint session, CK_MECHANISM* mechanism, nuint baseKey, CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        try { return Done(nameof(C_DeriveKey), Remote.DeriveKey(session, mechanism, baseKey, template, count, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DeriveKey), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SeedRandom(nuint session, byte* seed, nuint seedLength)
    {
        try { return Done(nameof(C_SeedRandom), Remote.Data(Id.C_SeedRandom, session, seed, seedLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SeedRandom), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GenerateRandom(nuint session, byte* output, nuint length)
    {
        try { return Done(nameof(C_GenerateRandom), Remote.GenerateRandom(session, output, length)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_GenerateRandom), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_GetFunctionStatus(nuint session) => (nuint)CKR_FUNCTION_NOT_PARALLEL;

    [UnmanagedCallersOnly]
    public static nuint C_CancelFunction(nuint session) => (nuint)CKR_FUNCTION_NOT_PARALLEL;

    [UnmanagedCallersOnly]
    public static nuint C_WaitForSlotEvent(nuint flags, nuint* slot, void* reserved)
    {
        try { return Done(nameof(C_WaitForSlotEvent), Remote.WaitForSlotEvent(flags, slot, reserved)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_WaitForSlotEvent), e); }
    }

    // ---- PKCS #11 3.0 --------------------------------------------------------------------------------

    [UnmanagedCallersOnly]
    public static nuint C_LoginUser(nuint session, nuint userType, byte* pin, nuint pinLength, byte* username, nuint usernameLength)
    {
        try { return Done(nameof(C_LoginUser), Remote.LoginUser(session, userType, pin, pinLength, username, usernameLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_LoginUser), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SessionCancel(nuint session, nuint flags)
    {
        try { return Done(nameof(C_SessionCancel), Remote.SessionHandle(Id.C_SessionCancel, session, flags)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SessionCancel), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageEncryptInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_MessageEncryptInit), Remote.MessageCryptInit(Id.C_MessageEncryptInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageEncryptInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_EncryptMessage(nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength,
        byte* plaintext, nuint plaintextLength, byte* ciphertext, nuint* ciphertextLength)
    {
        try { return Done(nameof(C_EncryptMessage), Remote.MessageOneShot(Id.C_EncryptMessage, session, parameter, parameterLength, associated, associatedLength, plaintext, plaintextLength, ciphertext, ciphertextLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptMessage), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_EncryptMessageBegin(nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength)
    {
        try { return Done(nameof(C_EncryptMessageBegin), Remote.MessageBegin(Id.C_EncryptMessageBegin, session, parameter, parameterLength, associated, associatedLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptMessageBegin), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_EncryptMessageNext(nuint session, void* parameter, nuint parameterLength, byte* plaintext, nuint plaintextLength,
        byte* ciphertext, nuint* ciphertextLength, nuint flags)
    {
        try { return Done(nameof(C_EncryptMessageNext), Remote.MessageNext(Id.C_EncryptMessageNext, session, parameter, parameterLength, plaintext, plaintextLength, ciphertext, ciphertextLength, flags)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_EncryptMessageNext), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageEncryptFinal(nuint session)
    {
        try { return Done(nameof(C_MessageEncryptFinal), Remote.MessageCryptFinal(Id.C_MessageEncryptFinal, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageEncryptFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageDecryptInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_MessageDecryptInit), Remote.MessageCryptInit(Id.C_MessageDecryptInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageDecryptInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptMessage(nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength,
        byte* ciphertext, nuint ciphertextLength, byte* plaintext, nuint* plaintextLength)
    {
        try { return Done(nameof(C_DecryptMessage), Remote.MessageOneShot(Id.C_DecryptMessage, session, parameter, parameterLength, associated, associatedLength, ciphertext, ciphertextLength, plaintext, plaintextLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptMessage), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptMessageBegin(nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength)
    {
        try { return Done(nameof(C_DecryptMessageBegin), Remote.MessageBegin(Id.C_DecryptMessageBegin, session, parameter, parameterLength, associated, associatedLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptMessageBegin), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_DecryptMessageNext(nuint session, void* parameter, nuint parameterLength, byte* ciphertext, nuint ciphertextLength,
        byte* plaintext, nuint* plaintextLength, nuint flags)
    {
        try { return Done(nameof(C_DecryptMessageNext), Remote.MessageNext(Id.C_DecryptMessageNext, session, parameter, parameterLength, ciphertext, ciphertextLength, plaintext, plaintextLength, flags)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_DecryptMessageNext), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageDecryptFinal(nuint session)
    {
        try { return Done(nameof(C_MessageDecryptFinal), Remote.MessageCryptFinal(Id.C_MessageDecryptFinal, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageDecryptFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageSignInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_MessageSignInit), Remote.Init(Id.C_MessageSignInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageSignInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignMessage(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint* signatureLength)
    {
        try { return Done(nameof(C_SignMessage), Remote.SignMessage(session, parameter, parameterLength, data, dataLength, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignMessage), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignMessageBegin(nuint session, void* parameter, nuint parameterLength)
    {
        try { return Done(nameof(C_SignMessageBegin), Remote.SignOrVerifyMessageBegin(Id.C_SignMessageBegin, session, parameter, parameterLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignMessageBegin), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_SignMessageNext(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint* signatureLength)
    {
        try { return Done(nameof(C_SignMessageNext), Remote.SignMessageNext(session, parameter, parameterLength, data, dataLength, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_SignMessageNext), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageSignFinal(nuint session)
    {
        try { return Done(nameof(C_MessageSignFinal), Remote.Session(Id.C_MessageSignFinal, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageSignFinal), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageVerifyInit(nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        try { return Done(nameof(C_MessageVerifyInit), Remote.Init(Id.C_MessageVerifyInit, session, mechanism, key)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageVerifyInit), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyMessage(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint signatureLength)
    {
        try { return Done(nameof(C_VerifyMessage), Remote.VerifyMessage(Id.C_VerifyMessage, session, parameter, parameterLength, data, dataLength, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyMessage), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyMessageBegin(nuint session, void* parameter, nuint parameterLength)
    {
        try { return Done(nameof(C_VerifyMessageBegin), Remote.SignOrVerifyMessageBegin(Id.C_VerifyMessageBegin, session, parameter, parameterLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyMessageBegin), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_VerifyMessageNext(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint signatureLength)
    {
        try { return Done(nameof(C_VerifyMessageNext), Remote.VerifyMessage(Id.C_VerifyMessageNext, session, parameter, parameterLength, data, dataLength, signature, signatureLength)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_VerifyMessageNext), e); }
    }

    [UnmanagedCallersOnly]
    public static nuint C_MessageVerifyFinal(nuint session)
    {
        try { return Done(nameof(C_MessageVerifyFinal), Remote.Session(Id.C_MessageVerifyFinal, session)); }
        catch (Exception e) { return Log.Unexpected(nameof(C_MessageVerifyFinal), e); }
    }
}
