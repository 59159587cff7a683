using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace P11Proxy.Conformance;

/// <summary>
/// A PKCS#11 module called through its CK_FUNCTION_LIST_3_0 (Pkcs11Interop covers only 2.40): the
/// 3.0 calls and the few 2.40 calls the 3.0 tests need, with raw pointers the test chooses. The
/// module's list comes from C_GetInterface("PKCS 11", 3.0), or from C_GetFunctionList when the
/// module has no 3.0 interface (<see cref="Has30"/> false: then only the 2.40 calls exist).
/// LP64: CK_ULONG is 64 bits; the table is a CK_VERSION padded to 8 bytes, then the functions.
/// </summary>
internal sealed unsafe class Module3 : IDisposable
{
    // 2.40 positions (PKCS #11 order), then the 3.0 additions after C_WaitForSlotEvent (67).
    private const int InitializeIndex = 0, FinalizeIndex = 1, GetInfoIndex = 2, GetSlotListIndex = 4, GetTokenInfoIndex = 6,
        GetMechanismListIndex = 7, GetMechanismInfoIndex = 8, OpenSessionIndex = 12, CloseSessionIndex = 13,
        LoginIndex = 18, LogoutIndex = 19, CreateObjectIndex = 20, EncryptInitIndex = 29, EncryptIndex = 30,
        EncryptUpdateIndex = 31, EncryptFinalIndex = 32, DecryptInitIndex = 33, DecryptIndex = 34, SignInitIndex = 42,
        SignIndex = 43, SignUpdateIndex = 44, SignFinalIndex = 45, VerifyInitIndex = 48, VerifyIndex = 49,
        VerifyUpdateIndex = 50, VerifyFinalIndex = 51, GenerateRandomIndex = 64;
    private const int GetInterfaceListIndex = 68, GetInterfaceIndex = 69, LoginUserIndex = 70, SessionCancelIndex = 71,
        MessageEncryptInitIndex = 72, EncryptMessageIndex = 73, EncryptMessageBeginIndex = 74, EncryptMessageNextIndex = 75,
        MessageEncryptFinalIndex = 76, MessageDecryptInitIndex = 77, DecryptMessageIndex = 78, DecryptMessageBeginIndex = 79,
        DecryptMessageNextIndex = 80, MessageDecryptFinalIndex = 81, MessageSignInitIndex = 82, SignMessageIndex = 83,
        SignMessageBeginIndex = 84, SignMessageNextIndex = 85, MessageSignFinalIndex = 86, MessageVerifyInitIndex = 87,
        VerifyMessageIndex = 88, VerifyMessageBeginIndex = 89, VerifyMessageNextIndex = 90, MessageVerifyFinalIndex = 91;

    /// <summary>sizeof(CK_TOKEN_INFO), sizeof(CK_INFO) on LP64 (what the C compiler says of NSS's header).</summary>
    private const int TokenInfoSize = 208, InfoSize = 88;

    public const ulong CKR_OK = 0, CKF_SERIAL_SESSION = 4, CKF_RW_SESSION = 2, CKF_OS_LOCKING_OK = 2, CKU_USER = 1;

    private readonly nint _library;
    private readonly nint _list;
    private bool _initialized;

    public string Path { get; }

    /// <summary>Whether the module offered a 3.0 interface (otherwise only the 2.40 list is there).</summary>
    public bool Has30 { get; }

    private Module3(string path, nint library, nint list, bool has30)
    {
        Path = path;
        _library = library;
        _list = list;
        Has30 = has30;
    }

    /// <summary>
    /// Loads <paramref name="path"/> and takes its "PKCS 11" 3.0 interface, or its 2.40 list (also
    /// when <paramref name="list240"/>: what a 2.40 application gets from C_GetFunctionList).
    /// </summary>
    public static Module3 Load(string path, bool list240 = false)
    {
        nint library = NativeLibrary.Load(path);
        if (!list240 && NativeLibrary.TryGetExport(library, "C_GetInterface", out var getInterface))
        {
            var name = "PKCS 11\0"u8;
            ushort version = 3; // CK_VERSION { 3, 0 }
            nint found = 0;
            fixed (byte* namePointer = name)
            {
                ulong rv = ((delegate* unmanaged<byte*, ushort*, nint*, ulong, ulong>)getInterface)(namePointer, &version, &found, 0);
                if (rv == CKR_OK && found != 0)
                    return new Module3(path, library, *(nint*)(found + sizeof(nint)), has30: true);
            }
        }
        nint list = 0;
        ulong rv2 = ((delegate* unmanaged<nint*, ulong>)NativeLibrary.GetExport(library, "C_GetFunctionList"))(&list);
        Assert.That(rv2, Is.EqualTo(CKR_OK), $"{path}: C_GetFunctionList");
        return new Module3(path, library, list, has30: false);
    }

    /// <summary>The interfaces the library exports (C_GetInterfaceList, the exported function): name, version, flags.</summary>
    public static List<(string Name, byte Major, byte Minor, ulong Flags)> InterfaceList(string path)
    {
        nint library = NativeLibrary.Load(path);
        var getList = (delegate* unmanaged<nint, ulong*, ulong>)NativeLibrary.GetExport(library, "C_GetInterfaceList");
        ulong count = 0;
        Assert.That(getList(0, &count), Is.EqualTo(CKR_OK), $"{path}: C_GetInterfaceList size");
        var interfaces = new byte[(int)count * 24]; // CK_INTERFACE: name pointer, list pointer, flags
        fixed (byte* p = interfaces)
        {
            Assert.That(getList((nint)p, &count), Is.EqualTo(CKR_OK), $"{path}: C_GetInterfaceList");
            var result = new List<(string, byte, byte, ulong)>();
            for (int i = 0; i < (int)count; i++)
            {
                nint name = *(nint*)(p + i * 24);
                byte* version = *(byte**)(p + i * 24 + 8);
                result.Add((Marshal.PtrToStringUTF8(name)!, version[0], version[1], *(ulong*)(p + i * 24 + 16)));
            }
            return result;
        }
    }

    /// <summary>C_GetInterface of the exported function: the found interface's version and flags, or the CK_RV.</summary>
    public static (ulong Rv, byte Major, byte Minor, ulong Flags) GetInterface(string path, string? name, (byte Major, byte Minor)? version, ulong flags)
    {
        nint library = NativeLibrary.Load(path);
        var get = (delegate* unmanaged<byte*, byte*, nint*, ulong, ulong>)NativeLibrary.GetExport(library, "C_GetInterface");
        var nameBytes = name is null ? null : Encoding.UTF8.GetBytes(name + "\0");
        byte* requested = stackalloc byte[2];
        if (version is { } v) { requested[0] = v.Major; requested[1] = v.Minor; }
        nint found = 0;
        fixed (byte* n = nameBytes)
        {
            ulong rv = get(n, version is null ? null : requested, &found, flags);
            if (rv != CKR_OK) return (rv, 0, 0, 0);
            byte* listVersion = *(byte**)(found + 8);
            return (rv, listVersion[0], listVersion[1], *(ulong*)(found + 16));
        }
    }

    private nint Entry(int index)
    {
        if (index >= GetInterfaceListIndex && !Has30)
            throw new InvalidOperationException($"{Path} has no 3.0 function list");
        return *(nint*)(_list + sizeof(nint) + index * sizeof(nint));
    }

    /// <summary>C_Initialize with OS locking and, when given, a pReserved string (softoken's database).</summary>
    public ulong Initialize(string? reserved)
    {
        // CK_C_INITIALIZE_ARGS: four mutex callbacks, flags, pReserved.
        var args = stackalloc ulong[6];
        args[4] = CKF_OS_LOCKING_OK;
        nint text = reserved is null ? 0 : Marshal.StringToCoTaskMemUTF8(reserved);
        try
        {
            args[5] = (ulong)text;
            ulong rv = ((delegate* unmanaged<ulong*, ulong>)Entry(InitializeIndex))(args);
            if (rv == CKR_OK) _initialized = true;
            return rv;
        }
        finally
        {
            if (text != 0) Marshal.FreeCoTaskMem(text);
        }
    }

    /// <summary>C_GetInfo: the CK_RV and the Cryptoki version the library reports.</summary>
    public (ulong Rv, byte Major, byte Minor) CryptokiVersion()
    {
        var info = stackalloc byte[InfoSize]; // the Cryptoki version comes first
        ulong rv = ((delegate* unmanaged<byte*, ulong>)Entry(GetInfoIndex))(info);
        return (rv, info[0], info[1]);
    }

    public ulong Finalize()
    {
        _initialized = false;
        return ((delegate* unmanaged<nint, ulong>)Entry(FinalizeIndex))(0);
    }

    public ulong[] SlotList()
    {
        ulong count = 0;
        Assert.That(((delegate* unmanaged<byte, ulong*, ulong*, ulong>)Entry(GetSlotListIndex))(1, null, &count), Is.EqualTo(CKR_OK), "C_GetSlotList");
        var slots = new ulong[count];
        fixed (ulong* p = slots)
            Assert.That(((delegate* unmanaged<byte, ulong*, ulong*, ulong>)Entry(GetSlotListIndex))(1, p, &count), Is.EqualTo(CKR_OK), "C_GetSlotList");
        return slots[..(int)count];
    }

    /// <summary>The slot whose token carries <paramref name="label"/>.</summary>
    public ulong SlotOf(string label)
    {
        var info = new byte[TokenInfoSize];
        foreach (var slot in SlotList())
        {
            fixed (byte* p = info)
                if (((delegate* unmanaged<ulong, byte*, ulong>)Entry(GetTokenInfoIndex))(slot, p) != CKR_OK) continue;
            if (Encoding.UTF8.GetString(info, 0, 32).TrimEnd() == label) return slot;
        }
        Assert.Fail($"{Path}: no token labelled '{label}'");
        return 0;
    }

    public ulong[] MechanismList(ulong slot)
    {
        ulong count = 0;
        Assert.That(((delegate* unmanaged<ulong, ulong*, ulong*, ulong>)Entry(GetMechanismListIndex))(slot, null, &count), Is.EqualTo(CKR_OK));
        var list = new ulong[count];
        fixed (ulong* p = list)
            Assert.That(((delegate* unmanaged<ulong, ulong*, ulong*, ulong>)Entry(GetMechanismListIndex))(slot, p, &count), Is.EqualTo(CKR_OK));
        return list[..(int)count];
    }

    public (ulong Rv, ulong Min, ulong Max, ulong Flags) MechanismInfo(ulong slot, ulong mechanism)
    {
        var info = stackalloc ulong[3];
        ulong rv = ((delegate* unmanaged<ulong, ulong, ulong*, ulong>)Entry(GetMechanismInfoIndex))(slot, mechanism, info);
        return (rv, info[0], info[1], info[2]);
    }

    public ulong OpenSession(ulong slot, out ulong session)
    {
        ulong s = 0;
        ulong rv = ((delegate* unmanaged<ulong, ulong, nint, nint, ulong*, ulong>)Entry(OpenSessionIndex))(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, 0, 0, &s);
        session = s;
        return rv;
    }

    public ulong CloseSession(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(CloseSessionIndex))(session);

    public ulong Login(ulong session, string pin)
    {
        var bytes = Encoding.UTF8.GetBytes(pin);
        fixed (byte* p = bytes)
            return ((delegate* unmanaged<ulong, ulong, byte*, ulong, ulong>)Entry(LoginIndex))(session, CKU_USER, p, (ulong)bytes.Length);
    }

    public ulong Logout(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(LogoutIndex))(session);

    public ulong LoginUser(ulong session, ulong userType, string pin, string? user)
    {
        var pinBytes = Encoding.UTF8.GetBytes(pin);
        var userBytes = user is null ? null : Encoding.UTF8.GetBytes(user);
        fixed (byte* p = pinBytes)
        fixed (byte* u = userBytes)
            return ((delegate* unmanaged<ulong, ulong, byte*, ulong, byte*, ulong, ulong>)Entry(LoginUserIndex))(
                session, userType, p, (ulong)pinBytes.Length, u, (ulong)(userBytes?.Length ?? 0));
    }

    public ulong SessionCancel(ulong session, ulong flags) => ((delegate* unmanaged<ulong, ulong, ulong>)Entry(SessionCancelIndex))(session, flags);

    /// <summary>A session secret key of <paramref name="keyType"/> with the given value, for encryption, decryption, signing and verifying.</summary>
    public ulong CreateSecretKey(ulong session, ulong keyType, byte[] value, out ulong key)
    {
        // CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_VALUE, CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY
        ulong secretKey = 4; // CKO_SECRET_KEY
        byte yes = 1, no = 0;
        ulong k = 0;
        fixed (byte* v = value)
        {
            var template = stackalloc ulong[8 * 3];
            void Set(int i, ulong type, void* p, ulong length) { template[i * 3] = type; template[i * 3 + 1] = (ulong)p; template[i * 3 + 2] = length; }
            Set(0, 0x0, &secretKey, 8);
            Set(1, 0x100, &keyType, 8);
            Set(2, 0x1, &no, 1);
            Set(3, 0x11, v, (ulong)value.Length);
            Set(4, 0x104, &yes, 1);
            Set(5, 0x105, &yes, 1);
            Set(6, 0x108, &yes, 1);
            Set(7, 0x10A, &yes, 1);
            ulong rv = ((delegate* unmanaged<ulong, ulong*, ulong, ulong*, ulong>)Entry(CreateObjectIndex))(session, template, 8, &k);
            key = k;
            return rv;
        }
    }

    // ---- 2.40 multi-part and one-shot operations (mechanism without parameter, or a flat one) ---------

    private static ulong WithMechanism(ulong mechanism, byte[]? parameter, Func<nint, ulong> call)
    {
        fixed (byte* p = parameter)
        {
            var m = stackalloc ulong[3];
            m[0] = mechanism;
            m[1] = (ulong)p;
            m[2] = (ulong)(parameter?.Length ?? 0);
            return call((nint)m);
        }
    }

    public ulong SignInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(SignInitIndex))(session, m, key));

    public ulong VerifyInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(VerifyInitIndex))(session, m, key));

    public ulong SignUpdate(ulong session, byte[] data)
    {
        fixed (byte* d = data)
            return ((delegate* unmanaged<ulong, byte*, ulong, ulong>)Entry(SignUpdateIndex))(session, d, (ulong)data.Length);
    }

    public ulong VerifyUpdate(ulong session, byte[] data)
    {
        fixed (byte* d = data)
            return ((delegate* unmanaged<ulong, byte*, ulong, ulong>)Entry(VerifyUpdateIndex))(session, d, (ulong)data.Length);
    }

    public ulong SignFinal(ulong session, out byte[] signature)
    {
        var buffer = new byte[512];
        ulong length = (ulong)buffer.Length;
        fixed (byte* b = buffer)
        {
            ulong rv = ((delegate* unmanaged<ulong, byte*, ulong*, ulong>)Entry(SignFinalIndex))(session, b, &length);
            signature = rv == CKR_OK ? buffer[..(int)length] : [];
            return rv;
        }
    }

    public ulong VerifyFinal(ulong session, byte[] signature)
    {
        fixed (byte* s = signature)
            return ((delegate* unmanaged<ulong, byte*, ulong, ulong>)Entry(VerifyFinalIndex))(session, s, (ulong)signature.Length);
    }

    // ---- message-based operations ---------------------------------------------------------------------

    public ulong MessageEncryptInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(MessageEncryptInitIndex))(session, m, key));

    public ulong MessageDecryptInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(MessageDecryptInitIndex))(session, m, key));

    public ulong MessageSignInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(MessageSignInitIndex))(session, m, key));

    public ulong MessageVerifyInit(ulong session, ulong mechanism, ulong key) =>
        WithMechanism(mechanism, null, m => ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(MessageVerifyInitIndex))(session, m, key));

    public ulong MessageEncryptFinal(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(MessageEncryptFinalIndex))(session);
    public ulong MessageDecryptFinal(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(MessageDecryptFinalIndex))(session);
    public ulong MessageSignFinal(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(MessageSignFinalIndex))(session);
    public ulong MessageVerifyFinal(ulong session) => ((delegate* unmanaged<ulong, ulong>)Entry(MessageVerifyFinalIndex))(session);

    /// <summary>C_EncryptMessage or C_DecryptMessage; <paramref name="output"/> null asks for the size.</summary>
    public ulong CryptMessage(bool encrypt, ulong session, nint parameter, ulong parameterLength, byte[] associated, byte[] input,
        nint output, ref ulong outputLength)
    {
        fixed (byte* a = associated)
        fixed (byte* i = input)
        fixed (ulong* length = &outputLength)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, byte*, ulong, nint, ulong*, ulong>)Entry(
                    encrypt ? EncryptMessageIndex : DecryptMessageIndex))(
                session, parameter, parameterLength, a, (ulong)associated.Length, i, (ulong)input.Length, output, length);
    }

    public ulong CryptMessageBegin(bool encrypt, ulong session, nint parameter, ulong parameterLength, byte[] associated)
    {
        fixed (byte* a = associated)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, ulong>)Entry(encrypt ? EncryptMessageBeginIndex : DecryptMessageBeginIndex))(
                session, parameter, parameterLength, a, (ulong)associated.Length);
    }

    public ulong CryptMessageNext(bool encrypt, ulong session, nint parameter, ulong parameterLength, byte[] input, nint output,
        ref ulong outputLength, ulong flags)
    {
        fixed (byte* i = input)
        fixed (ulong* length = &outputLength)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, nint, ulong*, ulong, ulong>)Entry(
                    encrypt ? EncryptMessageNextIndex : DecryptMessageNextIndex))(
                session, parameter, parameterLength, i, (ulong)input.Length, output, length, flags);
    }

    public ulong SignMessage(ulong session, nint parameter, ulong parameterLength, byte[] data, nint signature, ref ulong signatureLength)
    {
        fixed (byte* d = data)
        fixed (ulong* length = &signatureLength)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, nint, ulong*, ulong>)Entry(SignMessageIndex))(
                session, parameter, parameterLength, d, (ulong)data.Length, signature, length);
    }

    public ulong SignMessageBegin(ulong session, nint parameter, ulong parameterLength) =>
        ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(SignMessageBeginIndex))(session, parameter, parameterLength);

    public ulong SignMessageNext(ulong session, nint parameter, ulong parameterLength, byte[] data, nint signature, ulong* signatureLength)
    {
        fixed (byte* d = data)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, nint, ulong*, ulong>)Entry(SignMessageNextIndex))(
                session, parameter, parameterLength, d, (ulong)data.Length, signature, signatureLength);
    }

    public ulong VerifyMessage(ulong session, nint parameter, ulong parameterLength, byte[] data, byte[] signature)
    {
        fixed (byte* d = data)
        fixed (byte* s = signature)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, byte*, ulong, ulong>)Entry(VerifyMessageIndex))(
                session, parameter, parameterLength, d, (ulong)data.Length, s, (ulong)signature.Length);
    }

    public ulong VerifyMessageBegin(ulong session, nint parameter, ulong parameterLength) =>
        ((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(VerifyMessageBeginIndex))(session, parameter, parameterLength);

    public ulong VerifyMessageNext(ulong session, nint parameter, ulong parameterLength, byte[] data, byte[] signature)
    {
        fixed (byte* d = data)
        fixed (byte* s = signature)
            return ((delegate* unmanaged<ulong, nint, ulong, byte*, ulong, byte*, ulong, ulong>)Entry(VerifyMessageNextIndex))(
                session, parameter, parameterLength, d, (ulong)data.Length, s, (ulong)signature.Length);
    }

    public void Dispose()
    {
        if (_initialized) Finalize();
        // The library stays loaded: modules (ours, NativeAOT) must not be unloaded.
    }
}

/// <summary>A message parameter structure in native memory, with its IV/nonce and tag in guarded buffers.</summary>
internal sealed unsafe class MessageParams : IDisposable
{
    public const ulong CKG_NO_GENERATE = 0, CKG_GENERATE = 1, CKG_GENERATE_COUNTER = 2, CKG_GENERATE_RANDOM = 3, CKG_GENERATE_COUNTER_XOR = 4;

    public nint Pointer { get; }
    public ulong Length { get; }
    public HostileBroker.GuardedBuffer Iv { get; }
    public HostileBroker.GuardedBuffer Tag { get; }

    private MessageParams(ulong length, int ivLength, int tagLength)
    {
        Length = length;
        Pointer = (nint)NativeMemory.AllocZeroed((nuint)length);
        Iv = new HostileBroker.GuardedBuffer(ivLength);
        Tag = new HostileBroker.GuardedBuffer(tagLength);
    }

    private ulong* Fields => (ulong*)Pointer;

    /// <summary>CK_GCM_MESSAGE_PARAMS { pIv, ulIvLen, ulIvFixedBits, ivGenerator, pTag, ulTagBits }.</summary>
    public static MessageParams Gcm(byte[] iv, ulong fixedBits, ulong generator, int tagBits)
    {
        var p = new MessageParams(48, iv.Length, (tagBits + 7) / 8);
        iv.CopyTo(p.Iv.Bytes);
        p.Fields[0] = (ulong)p.Iv.Pointer;
        p.Fields[1] = (ulong)iv.Length;
        p.Fields[2] = fixedBits;
        p.Fields[3] = generator;
        p.Fields[4] = (ulong)p.Tag.Pointer;
        p.Fields[5] = (ulong)tagBits;
        return p;
    }

    /// <summary>CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS { pNonce, ulNonceLen, pTag } (a 16-byte tag).</summary>
    public static MessageParams ChaChaPoly(byte[] nonce)
    {
        var p = new MessageParams(24, nonce.Length, 16);
        nonce.CopyTo(p.Iv.Bytes);
        p.Fields[0] = (ulong)p.Iv.Pointer;
        p.Fields[1] = (ulong)nonce.Length;
        p.Fields[2] = (ulong)p.Tag.Pointer;
        return p;
    }

    /// <summary>CK_CCM_MESSAGE_PARAMS { ulDataLen, pNonce, ulNonceLen, ulNonceFixedBits, nonceGenerator, pMAC, ulMACLen }.</summary>
    public static MessageParams Ccm(ulong dataLength, byte[] nonce, ulong fixedBits, ulong generator, int macLength)
    {
        var p = new MessageParams(56, nonce.Length, macLength);
        nonce.CopyTo(p.Iv.Bytes);
        p.Fields[0] = dataLength;
        p.Fields[1] = (ulong)p.Iv.Pointer;
        p.Fields[2] = (ulong)nonce.Length;
        p.Fields[3] = fixedBits;
        p.Fields[4] = generator;
        p.Fields[5] = (ulong)p.Tag.Pointer;
        p.Fields[6] = (ulong)macLength;
        return p;
    }

    public void SetGenerator(ulong generator, int index = 3) => Fields[index] = generator;

    public void Dispose()
    {
        NativeMemory.Free((void*)Pointer);
        Iv.Dispose();
        Tag.Dispose();
    }
}
