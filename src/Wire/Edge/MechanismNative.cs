using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>Builds the backend's CK_MECHANISM (and parameter structure) from the wire form, in the call's arena.</summary>
public static unsafe class MechanismNative
{
    public static CK_MECHANISM* ToNative(NativeArena arena, in WireMechanism wire)
    {
        if (wire.IsNullMechanism)
            return null;
        var mechanism = arena.Alloc<CK_MECHANISM>();
        mechanism->mechanism = (nuint)wire.Type;
        switch (wire.Parameter)
        {
            case null:
                break;
            case RawParameter raw:
                mechanism->pParameter = raw.Bytes.IsEmpty ? null : arena.Copy(raw.Bytes.Span);
                mechanism->ulParameterLen = (nuint)raw.Bytes.Length;
                break;
            case RsaPssParameter pss:
            {
                var p = arena.Alloc<CK_RSA_PKCS_PSS_PARAMS>();
                p->hashAlg = (nuint)pss.HashAlgorithm;
                p->mgf = (nuint)pss.Mgf;
                p->sLen = (nuint)pss.SaltLength;
                Set(mechanism, p);
                break;
            }
            case RsaOaepParameter oaep:
            {
                var p = arena.Alloc<CK_RSA_PKCS_OAEP_PARAMS>();
                p->hashAlg = (nuint)oaep.HashAlgorithm;
                p->mgf = (nuint)oaep.Mgf;
                p->source = (nuint)oaep.Source;
                p->pSourceData = Bytes(arena, oaep.SourceData);
                p->ulSourceDataLen = (nuint)oaep.SourceData.Length;
                Set(mechanism, p);
                break;
            }
            case Ecdh1DeriveParameter ecdh:
            {
                var p = arena.Alloc<CK_ECDH1_DERIVE_PARAMS>();
                p->kdf = (nuint)ecdh.Kdf;
                p->pSharedData = (byte*)Bytes(arena, ecdh.SharedData);
                p->ulSharedDataLen = (nuint)ecdh.SharedData.Length;
                p->pPublicData = (byte*)Bytes(arena, ecdh.PublicData);
                p->ulPublicDataLen = (nuint)ecdh.PublicData.Length;
                Set(mechanism, p);
                break;
            }
            case AesCtrParameter ctr:
            {
                var p = arena.Alloc<CK_AES_CTR_PARAMS>();
                p->ulCounterBits = (nuint)ctr.CounterBits;
                ctr.CounterBlock.Span.CopyTo(new Span<byte>(p->cb, 16));
                Set(mechanism, p);
                break;
            }
            case GcmParameter gcm:
            {
                var p = arena.Alloc<CK_GCM_PARAMS>();
                p->pIv = (byte*)Bytes(arena, gcm.Iv);
                p->ulIvLen = (nuint)gcm.Iv.Length;
                p->ulIvBits = (nuint)gcm.IvBits;
                p->pAAD = (byte*)Bytes(arena, gcm.Aad);
                p->ulAADLen = (nuint)gcm.Aad.Length;
                p->ulTagBits = (nuint)gcm.TagBits;
                Set(mechanism, p);
                break;
            }
            case MacGeneralParameter mac:
            {
                var p = arena.Alloc<nuint>();
                *p = (nuint)mac.Length;
                Set(mechanism, p);
                break;
            }
            case IbmEcdsaOtherParameter other:
            {
                var p = arena.Alloc<CK_IBM_ECDSA_OTHER_PARAMS>();
                p->submechanism = (nuint)other.Submechanism;
                Set(mechanism, p);
                break;
            }
            case IbmAttributeBoundWrapParameter wrap:
            {
                var p = arena.Alloc<CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS>();
                p->hSignVerifyKey = (nuint)wrap.SignVerifyKey;
                Set(mechanism, p);
                break;
            }
            case IbmBtcDeriveParameter btc:
            {
                var p = arena.Alloc<CK_IBM_BTC_DERIVE_PARAMS>();
                p->type = (nuint)btc.Type;
                p->childKeyIndex = (nuint)btc.ChildKeyIndex;
                p->pChainCode = (byte*)Bytes(arena, btc.ChainCode);
                p->ulChainCodeLen = (nuint)btc.ChainCode.Length;
                p->version = (nuint)btc.Version;
                Set(mechanism, p);
                break;
            }
            case IbmKyberParameter kyber:
            {
                var p = arena.Alloc<CK_IBM_KYBER_PARAMS>();
                p->ulVersion = (nuint)kyber.Version;
                p->mode = (nuint)kyber.Mode;
                p->kdf = (nuint)kyber.Kdf;
                p->bPrepend = kyber.Prepend;
                p->pCipher = (byte*)Bytes(arena, kyber.Cipher);
                p->ulCipherLen = (nuint)kyber.Cipher.Length;
                p->pSharedData = (byte*)Bytes(arena, kyber.SharedData);
                p->ulSharedDataLen = (nuint)kyber.SharedData.Length;
                p->hSecret = (nuint)kyber.Secret;
                Set(mechanism, p);
                break;
            }
        }
        return mechanism;
    }

    private static void Set<T>(CK_MECHANISM* mechanism, T* parameter) where T : unmanaged
    {
        mechanism->pParameter = parameter;
        mechanism->ulParameterLen = (nuint)sizeof(T);
    }

    private static void* Bytes(NativeArena arena, in WireBytes bytes) =>
        bytes.IsNull ? null : arena.Copy(bytes.Data.Span);

    /// <summary>What C_DeriveKey2 sends back of the parameter after the backend ran (IBM BTC derive, Kyber).</summary>
    public static MechanismUpdate UpdateOf(CK_MECHANISM* mechanism)
    {
        if (mechanism == null || mechanism->pParameter == null)
            return new MechanismUpdate(false, 0, false, WireBytes.Null, 0);
        if (mechanism->mechanism == (nuint)CKM_IBM_BTC_DERIVE && mechanism->ulParameterLen == (nuint)sizeof(CK_IBM_BTC_DERIVE_PARAMS))
        {
            var p = (CK_IBM_BTC_DERIVE_PARAMS*)mechanism->pParameter;
            return DataOrLength(0, p->pChainCode, p->ulChainCodeLen);
        }
        if (mechanism->mechanism == (nuint)CKM_IBM_KYBER && mechanism->ulParameterLen == (nuint)sizeof(CK_IBM_KYBER_PARAMS))
        {
            var p = (CK_IBM_KYBER_PARAMS*)mechanism->pParameter;
            byte capsulation = p->mode == (nuint)CK_IBM_KYBER_KEM_ENCAPSULATE ? (byte)CK_IBM_KYBER_KEM_ENCAPSULATE : (byte)CK_IBM_KYBER_KEM_DECAPSULATE;
            return capsulation == (byte)CK_IBM_KYBER_KEM_ENCAPSULATE
                ? DataOrLength(capsulation, p->pCipher, p->ulCipherLen)
                : new MechanismUpdate(true, capsulation, false, WireBytes.Null, 0);
        }
        return new MechanismUpdate(true, 0, false, WireBytes.Null, 0);
    }

    private static MechanismUpdate DataOrLength(byte capsulation, byte* data, nuint length)
    {
        if (data == null || length > WireWriter.MaxArrayLength)
            return new MechanismUpdate(true, capsulation, false, WireBytes.Null, (uint)Math.Min(length, uint.MaxValue));
        var copy = new ReadOnlySpan<byte>(data, (int)length).ToArray();
        return new MechanismUpdate(true, capsulation, true, WireBytes.Of(copy), (uint)length);
    }
}
