using System.Runtime.InteropServices;
using System.Text;

namespace P11Proxy.Pkcs11;

// The C ABI of PKCS#11 on LP64 Linux (x86-64). CK_ULONG and every type defined from it (CK_RV,
// CK_FLAGS, handles, CK_SLOT_ID, CK_USER_TYPE, mechanism and attribute types) is 8 bytes, hence
// nuint; CK_BBOOL, CK_BYTE, CK_CHAR and CK_UTF8CHAR are byte. Structures keep the C compiler's
// natural alignment (pkcs11p.h packs to 1 only on Windows). Type and field names are the
// standard's so that each maps 1:1 onto pkcs11t.h / pkcs11f.h; tests/Unit/Pkcs11/AbiLayoutTests
// compares every size and offset with what cc computes from those headers.
#pragma warning disable CS1591, IDE1006 // names follow the C standard

[StructLayout(LayoutKind.Sequential)]
public struct CK_VERSION
{
    public byte major;
    public byte minor;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_INFO
{
    public CK_VERSION cryptokiVersion;
    public fixed byte manufacturerID[32];
    public nuint flags;
    public fixed byte libraryDescription[32];
    public CK_VERSION libraryVersion;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_SLOT_INFO
{
    public fixed byte slotDescription[64];
    public fixed byte manufacturerID[32];
    public nuint flags;
    public CK_VERSION hardwareVersion;
    public CK_VERSION firmwareVersion;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_TOKEN_INFO
{
    public fixed byte label[32];
    public fixed byte manufacturerID[32];
    public fixed byte model[16];
    public fixed byte serialNumber[16];
    public nuint flags;
    public nuint ulMaxSessionCount;
    public nuint ulSessionCount;
    public nuint ulMaxRwSessionCount;
    public nuint ulRwSessionCount;
    public nuint ulMaxPinLen;
    public nuint ulMinPinLen;
    public nuint ulTotalPublicMemory;
    public nuint ulFreePublicMemory;
    public nuint ulTotalPrivateMemory;
    public nuint ulFreePrivateMemory;
    public CK_VERSION hardwareVersion;
    public CK_VERSION firmwareVersion;
    public fixed byte utcTime[16];
}

[StructLayout(LayoutKind.Sequential)]
public struct CK_SESSION_INFO
{
    public nuint slotID;
    public nuint state;
    public nuint flags;
    public nuint ulDeviceError;
}

[StructLayout(LayoutKind.Sequential)]
public struct CK_MECHANISM_INFO
{
    public nuint ulMinKeySize;
    public nuint ulMaxKeySize;
    public nuint flags;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_ATTRIBUTE
{
    public nuint type;
    public void* pValue;
    public nuint ulValueLen;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_DATE
{
    public fixed byte year[4];
    public fixed byte month[2];
    public fixed byte day[2];
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_MECHANISM
{
    public nuint mechanism;
    public void* pParameter;
    public nuint ulParameterLen;
}

// The mutex callbacks are only ever passed through or compared with null, so void* is enough.
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_C_INITIALIZE_ARGS
{
    public void* CreateMutex;
    public void* DestroyMutex;
    public void* LockMutex;
    public void* UnlockMutex;
    public nuint flags;
    public void* pReserved;
}

// pFunctionList points at a CK_FUNCTION_LIST or CK_FUNCTION_LIST_3_0 depending on the interface
// version, so it stays untyped.
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_INTERFACE
{
    public byte* pInterfaceName;
    public void* pFunctionList;
    public nuint flags;
}

// ---- mechanism parameters that p11-kit's RPC protocol serialises ---------------------------------

[StructLayout(LayoutKind.Sequential)]
public struct CK_RSA_PKCS_PSS_PARAMS
{
    public nuint hashAlg;
    public nuint mgf;
    public nuint sLen;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_RSA_PKCS_OAEP_PARAMS
{
    public nuint hashAlg;
    public nuint mgf;
    public nuint source;
    public void* pSourceData;
    public nuint ulSourceDataLen;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_ECDH1_DERIVE_PARAMS
{
    public nuint kdf;
    public nuint ulSharedDataLen;
    public byte* pSharedData;
    public nuint ulPublicDataLen;
    public byte* pPublicData;
}

// The 3.0 layout (NSS calls it CK_GCM_PARAMS_V3); the 2.40 draft without ulIvBits is not used.
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_GCM_PARAMS
{
    public byte* pIv;
    public nuint ulIvLen;
    public nuint ulIvBits;
    public byte* pAAD;
    public nuint ulAADLen;
    public nuint ulTagBits;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_AES_CTR_PARAMS
{
    public nuint ulCounterBits;
    public fixed byte cb[16];
}

// ---- per-message parameters of the 3.0 message-based calls (carried by value, typed form) --------

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_GCM_MESSAGE_PARAMS
{
    public byte* pIv;
    public nuint ulIvLen;
    public nuint ulIvFixedBits;
    public nuint ivGenerator;
    public byte* pTag;
    public nuint ulTagBits;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_CCM_MESSAGE_PARAMS
{
    public nuint ulDataLen;
    public byte* pNonce;
    public nuint ulNonceLen;
    public nuint ulNonceFixedBits;
    public nuint nonceGenerator;
    public byte* pMAC;
    public nuint ulMACLen;
}

/// <summary>ulNonceLen counts bytes (NSS softoken passes it to ChaCha20Poly1305_Encrypt as such); the tag is 16 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS
{
    public byte* pNonce;
    public nuint ulNonceLen;
    public byte* pTag;
}

// IBM vendor parameters: layouts from p11-kit's common/pkcs11x.h (no Debian header has them).

[StructLayout(LayoutKind.Sequential)]
public struct CK_IBM_ECDSA_OTHER_PARAMS
{
    public nuint submechanism;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_IBM_BTC_DERIVE_PARAMS
{
    public nuint type;
    public nuint childKeyIndex;
    public byte* pChainCode;
    public nuint ulChainCodeLen;
    public nuint version;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_IBM_KYBER_PARAMS
{
    public nuint ulVersion;
    public nuint mode;        // CK_IBM_KYBER_KEM_MODE
    public nuint kdf;         // CK_IBM_KYBER_KDF_TYPE
    public byte bPrepend;     // CK_BBOOL: 7 bytes of padding follow
    public byte* pCipher;
    public nuint ulCipherLen;
    public byte* pSharedData;
    public nuint ulSharedDataLen;
    public nuint hSecret;
}

[StructLayout(LayoutKind.Sequential)]
public struct CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS
{
    public nuint hSignVerifyKey;
}

// ---- function lists ------------------------------------------------------------------------------
// CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0 and their sizes are generated from pkcs11f.h into
// FunctionLists.g.cs (generate-abi.py), like the stubs that fill them in the module.

/// <summary>Facts about the ABI and helpers for its fixed-width, space-padded text fields.</summary>
public static partial class Pkcs11Abi
{
    /// <summary>
    /// Fills a fixed-width field (label, manufacturerID, ...) with UTF-8 text padded with spaces,
    /// as the standard requires; text that does not fit is cut at a character boundary so the
    /// field never ends in half a UTF-8 sequence.
    /// </summary>
    public static void WritePadded(Span<byte> field, ReadOnlySpan<byte> text)
    {
        field.Fill((byte)' ');
        var length = Math.Min(text.Length, field.Length);
        if (length < text.Length)
            while (length > 0 && (text[length] & 0xC0) == 0x80) // text[length] continues a sequence
                length--;
        text[..length].CopyTo(field);
    }

    public static void WritePadded(Span<byte> field, string text) => WritePadded(field, Encoding.UTF8.GetBytes(text));

    /// <summary>
    /// The text of a padded field without its padding. NULs are trimmed too because some modules
    /// zero-fill instead of space-padding.
    /// </summary>
    public static string ReadPadded(ReadOnlySpan<byte> field) => Encoding.UTF8.GetString(field).TrimEnd(' ', '\0');
}
