using System.Runtime.InteropServices;
using Net.Pkcs11Interop.Common;

namespace P11Proxy.Transparency;

/// <summary>
/// A PKCS#11 module called through its function list with exactly the pointers a test chooses
/// (NULL or not, empty or not, garbage on purpose): Pkcs11Interop decides those itself. Each
/// instance holds the list its own C_GetFunctionList returned, so two p11-kit-client.so instances
/// are two clients. CK_ULONG is 64 bits (LP64).
/// </summary>
internal sealed unsafe class RawModule
{
    // Positions in CK_FUNCTION_LIST after its CK_VERSION (padded to a pointer), PKCS #11 order.
    private const int Initialize = 0, Finalize = 1, GetInfoIndex = 2, GetSlotListIndex = 4, GetTokenInfoIndex = 6,
        OpenSessionIndex = 12, CloseSessionIndex = 13, CloseAllSessionsIndex = 14, GetSessionInfoIndex = 15,
        LoginIndex = 18, CreateObjectIndex = 20, CopyObjectIndex = 21, DestroyObjectIndex = 22,
        GetAttributeValueIndex = 24, SetAttributeValueIndex = 25, FindObjectsInitIndex = 26, FindObjectsIndex = 27,
        FindObjectsFinalIndex = 28, EncryptInitIndex = 29, EncryptUpdateIndex = 31, EncryptFinalIndex = 32,
        DecryptInitIndex = 33, DecryptUpdateIndex = 35, DecryptFinalIndex = 36, GenerateRandomIndex = 64,
        GetFunctionStatusIndex = 65, WaitForSlotEventIndex = 67;

    public const ulong CKF_OS_LOCKING_OK = 2, CKF_SERIAL_SESSION = 4, CKF_RW_SESSION = 2, CKF_DONT_BLOCK = 1;

    /// <summary>sizeof(CK_INFO) on LP64: version, 32 bytes, flags at 40, 32 bytes, version, padding to 88.</summary>
    public const int InfoSize = 88;

    /// <summary>sizeof(CK_TOKEN_INFO) on LP64 (label first, 32 bytes).</summary>
    public const int TokenInfoSize = 208;

    private readonly nint _list;

    public string Path { get; }

    private RawModule(string path, nint list)
    {
        Path = path;
        _list = list;
    }

    /// <summary>dlopen (once per path, as hosts do) and C_GetFunctionList: the host "loads" the module.</summary>
    public static RawModule Load(string path)
    {
        var library = NativeLibrary.Load(path);
        var get = (delegate* unmanaged<nint*, ulong>)NativeLibrary.GetExport(library, "C_GetFunctionList");
        nint list = 0;
        var rv = (CKR)get(&list);
        if (rv != CKR.CKR_OK || list == 0)
            throw new InvalidOperationException($"{path}: C_GetFunctionList returned {rv}");
        return new RawModule(path, list);
    }

    /// <summary>The same library asked for its function list again: a host loading it anew.</summary>
    public RawModule Reload() => Load(Path);

    private nint Entry(int index) => *(nint*)(_list + sizeof(nint) + index * sizeof(nint));

    // ---- general --------------------------------------------------------------------------------

    /// <summary>C_Initialize with CKF_OS_LOCKING_OK and the given pReserved.</summary>
    public CKR Init(nint reserved = 0)
    {
        var args = stackalloc ulong[6]; // four mutex callbacks, flags, pReserved
        args[4] = CKF_OS_LOCKING_OK;
        args[5] = (ulong)reserved;
        return (CKR)((delegate* unmanaged<void*, ulong>)Entry(Initialize))(args);
    }

    public CKR Fini() => (CKR)((delegate* unmanaged<void*, ulong>)Entry(Finalize))(null);

    public CKR GetInfo(byte[] info)
    {
        fixed (byte* p = info)
            return (CKR)((delegate* unmanaged<byte*, ulong>)Entry(GetInfoIndex))(p);
    }

    public CKR GetSlotList(bool present, ulong[]? slots, ref ulong count)
    {
        fixed (ulong* s = slots)
        fixed (ulong* c = &count)
            return (CKR)((delegate* unmanaged<byte, ulong*, ulong*, ulong>)Entry(GetSlotListIndex))(present ? (byte)1 : (byte)0, slots is null ? null : s, c);
    }

    public CKR GetTokenInfo(ulong slot, byte[] info)
    {
        fixed (byte* p = info)
            return (CKR)((delegate* unmanaged<ulong, byte*, ulong>)Entry(GetTokenInfoIndex))(slot, p);
    }

    public CKR WaitForSlotEvent(ulong flags, out ulong slot)
    {
        ulong s = ulong.MaxValue;
        var rv = (CKR)((delegate* unmanaged<ulong, ulong*, void*, ulong>)Entry(WaitForSlotEventIndex))(flags, &s, null);
        slot = s;
        return rv;
    }

    public CKR GetFunctionStatus(ulong session) => (CKR)((delegate* unmanaged<ulong, ulong>)Entry(GetFunctionStatusIndex))(session);

    // ---- sessions -------------------------------------------------------------------------------

    public CKR OpenSession(ulong slot, ulong flags, out ulong session)
    {
        ulong s = 0;
        var rv = (CKR)((delegate* unmanaged<ulong, ulong, void*, void*, ulong*, ulong>)Entry(OpenSessionIndex))(slot, flags, null, null, &s);
        session = s;
        return rv;
    }

    public CKR CloseSession(ulong session) => (CKR)((delegate* unmanaged<ulong, ulong>)Entry(CloseSessionIndex))(session);

    public CKR CloseAllSessions(ulong slot) => (CKR)((delegate* unmanaged<ulong, ulong>)Entry(CloseAllSessionsIndex))(slot);

    /// <summary>C_GetSessionInfo: the state (CKS_*) on success.</summary>
    public CKR GetSessionState(ulong session, out ulong state)
    {
        var info = stackalloc ulong[4]; // slotID, state, flags, ulDeviceError
        var rv = (CKR)((delegate* unmanaged<ulong, ulong*, ulong>)Entry(GetSessionInfoIndex))(session, info);
        state = info[1];
        return rv;
    }

    public CKR Login(ulong session, string pin)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(pin);
        fixed (byte* p = bytes)
            return (CKR)((delegate* unmanaged<ulong, ulong, byte*, ulong, ulong>)Entry(LoginIndex))(session, 1 /* CKU_USER */, p, (ulong)bytes.Length);
    }

    // ---- objects --------------------------------------------------------------------------------

    public CKR CreateObject(ulong session, Template template, out ulong handle)
    {
        ulong h = 0;
        var rv = (CKR)((delegate* unmanaged<ulong, nint, ulong, ulong*, ulong>)Entry(CreateObjectIndex))(session, template.Pointer, template.Count, &h);
        handle = h;
        return rv;
    }

    public CKR CopyObject(ulong session, ulong source, Template template, out ulong handle)
    {
        ulong h = 0;
        var rv = (CKR)((delegate* unmanaged<ulong, ulong, nint, ulong, ulong*, ulong>)Entry(CopyObjectIndex))(session, source, template.Pointer, template.Count, &h);
        handle = h;
        return rv;
    }

    public CKR DestroyObject(ulong session, ulong handle) => (CKR)((delegate* unmanaged<ulong, ulong, ulong>)Entry(DestroyObjectIndex))(session, handle);

    public CKR GetAttributeValue(ulong session, ulong handle, Template template) =>
        (CKR)((delegate* unmanaged<ulong, ulong, nint, ulong, ulong>)Entry(GetAttributeValueIndex))(session, handle, template.Pointer, template.Count);

    public CKR SetAttributeValue(ulong session, ulong handle, Template template) =>
        (CKR)((delegate* unmanaged<ulong, ulong, nint, ulong, ulong>)Entry(SetAttributeValueIndex))(session, handle, template.Pointer, template.Count);

    public CKR FindObjectsInit(ulong session, Template template) =>
        (CKR)((delegate* unmanaged<ulong, nint, ulong, ulong>)Entry(FindObjectsInitIndex))(session, template.Pointer, template.Count);

    /// <summary>C_FindObjects into <paramref name="handles"/> (null: a NULL array) claiming room for <paramref name="max"/>.</summary>
    public CKR FindObjects(ulong session, ulong[]? handles, ulong max, out ulong found)
    {
        ulong n = ulong.MaxValue;
        CKR rv;
        fixed (ulong* h = handles)
            rv = (CKR)((delegate* unmanaged<ulong, ulong*, ulong, ulong*, ulong>)Entry(FindObjectsIndex))(session, handles is null ? null : h, max, &n);
        found = n;
        return rv;
    }

    public CKR FindObjectsFinal(ulong session) => (CKR)((delegate* unmanaged<ulong, ulong>)Entry(FindObjectsFinalIndex))(session);

    // ---- encryption -----------------------------------------------------------------------------

    /// <summary>A CK_MECHANISM {type, pParameter, ulParameterLen} built on the stack around <paramref name="parameter"/>.</summary>
    private CKR Init(int index, ulong session, ulong mechanism, byte[]? parameter, ulong key)
    {
        fixed (byte* p = parameter)
        {
            var m = stackalloc ulong[3];
            m[0] = mechanism;
            m[1] = parameter is null ? 0 : (ulong)p;
            m[2] = parameter is null ? 0 : (ulong)parameter.Length;
            return (CKR)((delegate* unmanaged<ulong, ulong*, ulong, ulong>)Entry(index))(session, m, key);
        }
    }

    public CKR EncryptInit(ulong session, ulong mechanism, byte[]? parameter, ulong key) => Init(EncryptInitIndex, session, mechanism, parameter, key);
    public CKR DecryptInit(ulong session, ulong mechanism, byte[]? parameter, ulong key) => Init(DecryptInitIndex, session, mechanism, parameter, key);

    /// <summary>*Update with an output buffer of <paramref name="output"/>'s size (null: a NULL buffer).</summary>
    private CKR Update(int index, ulong session, byte[] input, byte[]? output, ref ulong outputLength)
    {
        // A zero-length array must still be a non-NULL pointer: pin a one-byte scratch behind it.
        byte scratch = 0;
        fixed (byte* i = input)
        fixed (byte* o = output)
        fixed (ulong* l = &outputLength)
            return (CKR)((delegate* unmanaged<ulong, byte*, ulong, byte*, ulong*, ulong>)Entry(index))(
                session, i, (ulong)input.Length, output is null ? null : output.Length == 0 ? &scratch : o, l);
    }

    private CKR Final(int index, ulong session, byte[]? output, ref ulong outputLength)
    {
        byte scratch = 0;
        fixed (byte* o = output)
        fixed (ulong* l = &outputLength)
            return (CKR)((delegate* unmanaged<ulong, byte*, ulong*, ulong>)Entry(index))(
                session, output is null ? null : output.Length == 0 ? &scratch : o, l);
    }

    public CKR EncryptUpdate(ulong session, byte[] input, byte[]? output, ref ulong length) => Update(EncryptUpdateIndex, session, input, output, ref length);
    public CKR EncryptFinal(ulong session, byte[]? output, ref ulong length) => Final(EncryptFinalIndex, session, output, ref length);
    public CKR DecryptUpdate(ulong session, byte[] input, byte[]? output, ref ulong length) => Update(DecryptUpdateIndex, session, input, output, ref length);
    public CKR DecryptFinal(ulong session, byte[]? output, ref ulong length) => Final(DecryptFinalIndex, session, output, ref length);

    /// <summary>C_GenerateRandom into <paramref name="output"/> (null: a NULL buffer) of <paramref name="length"/> bytes.</summary>
    public CKR GenerateRandom(ulong session, byte[]? output, ulong length)
    {
        fixed (byte* o = output)
            return (CKR)((delegate* unmanaged<ulong, byte*, ulong, ulong>)Entry(GenerateRandomIndex))(session, output is null ? null : o, length);
    }
}

/// <summary>
/// A CK_ATTRIBUTE array in native memory: <see cref="Pointer"/> is never NULL, even for an empty
/// template (that is the case under test), unless made with <see cref="Null"/>.
/// </summary>
internal sealed unsafe class Template : IDisposable
{
    private readonly List<nint> _allocations = new();

    public nint Pointer { get; }
    public ulong Count { get; }

    private Template(nint pointer, ulong count)
    {
        Pointer = pointer;
        Count = count;
    }

    public static Template Null() => new(0, 0);

    /// <summary>Attributes with their values (byte[], ulong as 8 bytes, bool as one byte).</summary>
    public static Template Of(params (ulong type, object value)[] attributes)
    {
        // One spare entry: an empty template is a valid, non-NULL pointer.
        var pointer = Marshal.AllocHGlobal(24 * (attributes.Length + 1));
        var template = new Template(pointer, (ulong)attributes.Length);
        template._allocations.Add(pointer);
        var entries = (ulong*)pointer;
        for (int i = 0; i < attributes.Length; i++)
        {
            byte[] value = attributes[i].value switch
            {
                byte[] b => b,
                ulong u => BitConverter.GetBytes(u),
                bool b => [b ? (byte)1 : (byte)0],
                string s => System.Text.Encoding.UTF8.GetBytes(s),
                _ => throw new ArgumentException($"attribute value {attributes[i].value.GetType()}"),
            };
            var copy = Marshal.AllocHGlobal(Math.Max(1, value.Length));
            template._allocations.Add(copy);
            Marshal.Copy(value, 0, copy, value.Length);
            entries[i * 3] = attributes[i].type;
            entries[i * 3 + 1] = (ulong)copy;
            entries[i * 3 + 2] = (ulong)value.Length;
        }
        return template;
    }

    public void Dispose()
    {
        foreach (var allocation in _allocations) Marshal.FreeHGlobal(allocation);
        _allocations.Clear();
    }
}
