using System.Runtime.InteropServices;
using System.Text;

namespace P11Proxy.Pkcs11;

// The C ABI of PKCS#11 on LP64 Linux: CK_ULONG and every type derived from it (handles, flags,
// CK_RV, mechanism and attribute types) are 8 bytes, so they are nuint here; CK_BBOOL and CK_BYTE
// are byte; structures use the C compiler's natural alignment. Names are the standard's, so each
// field maps 1:1 to the specification. tests/Unit/Pkcs11/AbiLayoutTests compares every size and
// offset with what the C compiler computes.
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

[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_INTERFACE
{
    public byte* pInterfaceName;
    public void* pFunctionList;
    public nuint flags;
}

// ---- mechanism parameters p11-kit serialises --------------------------------------------------------

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
    public nuint mode;
    public nuint kdf;
    public byte bPrepend;
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

/// <summary>
/// CK_FUNCTION_LIST_3_0. A 2.40 module's CK_FUNCTION_LIST is the same up to C_WaitForSlotEvent;
/// the fields after it exist only when the module returned a 3.0 interface.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CK_FUNCTION_LIST_3_0
{
    public CK_VERSION version;
    public delegate* unmanaged<void*, nuint> C_Initialize;
    public delegate* unmanaged<void*, nuint> C_Finalize;
    public delegate* unmanaged<CK_INFO*, nuint> C_GetInfo;
    public delegate* unmanaged<void**, nuint> C_GetFunctionList;
    public delegate* unmanaged<byte, nuint*, nuint*, nuint> C_GetSlotList;
    public delegate* unmanaged<nuint, CK_SLOT_INFO*, nuint> C_GetSlotInfo;
    public delegate* unmanaged<nuint, CK_TOKEN_INFO*, nuint> C_GetTokenInfo;
    public delegate* unmanaged<nuint, nuint*, nuint*, nuint> C_GetMechanismList;
    public delegate* unmanaged<nuint, nuint, CK_MECHANISM_INFO*, nuint> C_GetMechanismInfo;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint> C_InitToken;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_InitPIN;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint, nuint> C_SetPIN;
    public delegate* unmanaged<nuint, nuint, void*, void*, nuint*, nuint> C_OpenSession;
    public delegate* unmanaged<nuint, nuint> C_CloseSession;
    public delegate* unmanaged<nuint, nuint> C_CloseAllSessions;
    public delegate* unmanaged<nuint, CK_SESSION_INFO*, nuint> C_GetSessionInfo;
    public delegate* unmanaged<nuint, byte*, nuint*, nuint> C_GetOperationState;
    public delegate* unmanaged<nuint, byte*, nuint, nuint, nuint, nuint> C_SetOperationState;
    public delegate* unmanaged<nuint, nuint, byte*, nuint, nuint> C_Login;
    public delegate* unmanaged<nuint, nuint> C_Logout;
    public delegate* unmanaged<nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint> C_CreateObject;
    public delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint> C_CopyObject;
    public delegate* unmanaged<nuint, nuint, nuint> C_DestroyObject;
    public delegate* unmanaged<nuint, nuint, nuint*, nuint> C_GetObjectSize;
    public delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint> C_GetAttributeValue;
    public delegate* unmanaged<nuint, nuint, CK_ATTRIBUTE*, nuint, nuint> C_SetAttributeValue;
    public delegate* unmanaged<nuint, CK_ATTRIBUTE*, nuint, nuint> C_FindObjectsInit;
    public delegate* unmanaged<nuint, nuint*, nuint, nuint*, nuint> C_FindObjects;
    public delegate* unmanaged<nuint, nuint> C_FindObjectsFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_EncryptInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_Encrypt;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_EncryptUpdate;
    public delegate* unmanaged<nuint, byte*, nuint*, nuint> C_EncryptFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_DecryptInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_Decrypt;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_DecryptUpdate;
    public delegate* unmanaged<nuint, byte*, nuint*, nuint> C_DecryptFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint> C_DigestInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_Digest;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_DigestUpdate;
    public delegate* unmanaged<nuint, nuint, nuint> C_DigestKey;
    public delegate* unmanaged<nuint, byte*, nuint*, nuint> C_DigestFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_SignInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_Sign;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_SignUpdate;
    public delegate* unmanaged<nuint, byte*, nuint*, nuint> C_SignFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_SignRecoverInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_SignRecover;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_VerifyInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint, nuint> C_Verify;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_VerifyUpdate;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_VerifyFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_VerifyRecoverInit;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_VerifyRecover;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_DigestEncryptUpdate;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_DecryptDigestUpdate;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_SignEncryptUpdate;
    public delegate* unmanaged<nuint, byte*, nuint, byte*, nuint*, nuint> C_DecryptVerifyUpdate;
    public delegate* unmanaged<nuint, CK_MECHANISM*, CK_ATTRIBUTE*, nuint, nuint*, nuint> C_GenerateKey;
    public delegate* unmanaged<nuint, CK_MECHANISM*, CK_ATTRIBUTE*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint*, nuint> C_GenerateKeyPair;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint, byte*, nuint*, nuint> C_WrapKey;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, byte*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint> C_UnwrapKey;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, CK_ATTRIBUTE*, nuint, nuint*, nuint> C_DeriveKey;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_SeedRandom;
    public delegate* unmanaged<nuint, byte*, nuint, nuint> C_GenerateRandom;
    public delegate* unmanaged<nuint, nuint> C_GetFunctionStatus;
    public delegate* unmanaged<nuint, nuint> C_CancelFunction;
    public delegate* unmanaged<nuint, nuint*, void*, nuint> C_WaitForSlotEvent;
    // PKCS #11 3.0
    public delegate* unmanaged<CK_INTERFACE*, nuint*, nuint> C_GetInterfaceList;
    public delegate* unmanaged<byte*, CK_VERSION*, CK_INTERFACE**, nuint, nuint> C_GetInterface;
    public delegate* unmanaged<nuint, nuint, byte*, nuint, byte*, nuint, nuint> C_LoginUser;
    public delegate* unmanaged<nuint, nuint, nuint> C_SessionCancel;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_MessageEncryptInit;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, byte*, nuint*, nuint> C_EncryptMessage;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, nuint> C_EncryptMessageBegin;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint, nuint> C_EncryptMessageNext;
    public delegate* unmanaged<nuint, nuint> C_MessageEncryptFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_MessageDecryptInit;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, byte*, nuint*, nuint> C_DecryptMessage;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, nuint> C_DecryptMessageBegin;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint, nuint> C_DecryptMessageNext;
    public delegate* unmanaged<nuint, nuint> C_MessageDecryptFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_MessageSignInit;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint> C_SignMessage;
    public delegate* unmanaged<nuint, void*, nuint, nuint> C_SignMessageBegin;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint*, nuint> C_SignMessageNext;
    public delegate* unmanaged<nuint, nuint> C_MessageSignFinal;
    public delegate* unmanaged<nuint, CK_MECHANISM*, nuint, nuint> C_MessageVerifyInit;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, nuint> C_VerifyMessage;
    public delegate* unmanaged<nuint, void*, nuint, nuint> C_VerifyMessageBegin;
    public delegate* unmanaged<nuint, void*, nuint, byte*, nuint, byte*, nuint, nuint> C_VerifyMessageNext;
    public delegate* unmanaged<nuint, nuint> C_MessageVerifyFinal;
}

/// <summary>Facts about the ABI and helpers for its fixed-width, space-padded text fields.</summary>
public static class Pkcs11Abi
{
    /// <summary>Function pointers in a 2.40 CK_FUNCTION_LIST (C_Initialize … C_WaitForSlotEvent).</summary>
    public const int FunctionCount240 = 68;

    /// <summary>Function pointers in CK_FUNCTION_LIST_3_0.</summary>
    public const int FunctionCount30 = 92;

    /// <summary>Copies text into a fixed-width field, padding with spaces (truncating what does not fit).</summary>
    public static void WritePadded(Span<byte> field, ReadOnlySpan<byte> text)
    {
        field.Fill((byte)' ');
        text[..Math.Min(text.Length, field.Length)].CopyTo(field);
    }

    public static void WritePadded(Span<byte> field, string text) => WritePadded(field, Encoding.UTF8.GetBytes(text));

    /// <summary>The text of a space-padded field, without the padding.</summary>
    public static string ReadPadded(ReadOnlySpan<byte> field) => Encoding.UTF8.GetString(field).TrimEnd(' ', '\0');
}
