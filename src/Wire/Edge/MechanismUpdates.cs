using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// Writes a C_DeriveKey2 parameter update back into the caller's mechanism parameter, copying
/// only into buffers the caller supplied and only within their declared lengths.
/// </summary>
public static unsafe class MechanismUpdates
{
    public static ulong Apply(CK_MECHANISM* mechanism, in MechanismUpdate update)
    {
        if (mechanism == null || !update.HasParameter || mechanism->pParameter == null)
            return CKR_OK;
        if (mechanism->mechanism == CKM_IBM_BTC_DERIVE && mechanism->ulParameterLen == (nuint)sizeof(CK_IBM_BTC_DERIVE_PARAMS))
        {
            var p = (CK_IBM_BTC_DERIVE_PARAMS*)mechanism->pParameter;
            return CopyBack(update, (byte*)p->pChainCode, &p->ulChainCodeLen);
        }
        if (mechanism->mechanism == CKM_IBM_KYBER && mechanism->ulParameterLen == (nuint)sizeof(CK_IBM_KYBER_PARAMS)
            && update.Capsulation == CK_IBM_KYBER_KEM_ENCAPSULATE)
        {
            var p = (CK_IBM_KYBER_PARAMS*)mechanism->pParameter;
            return CopyBack(update, (byte*)p->pCipher, &p->ulCipherLen);
        }
        return CKR_OK;
    }

    private static ulong CopyBack(in MechanismUpdate update, byte* buffer, nuint* length)
    {
        if (!update.HasData)
        {
            *length = update.Length;
            return CKR_OK;
        }
        int size = update.Data.Length;
        if (buffer == null || *length < (nuint)size)
        {
            *length = (nuint)size;
            return CKR_BUFFER_TOO_SMALL;
        }
        update.Data.Data.Span.CopyTo(new Span<byte>(buffer, size));
        *length = (nuint)size;
        return CKR_OK;
    }
}
