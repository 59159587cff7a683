using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>Turns the caller's CK_MECHANISM into the pointer-free form the wire carries.</summary>
public static unsafe class MechanismMarshal
{
    /// <summary>
    /// Mechanisms whose parameter is a flat byte string (an IV) but that p11-kit lists nowhere:
    /// peers of version 2 take such a parameter as plain bytes, so they can be carried.
    /// </summary>
    private static readonly HashSet<ulong> FlatParameterMechanisms =
    [
        CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD,
    ];

    /// <summary>Returns CKR_OK with the wire form, or the CK_RV p11-kit's client gives for what it cannot carry.</summary>
    public static ulong FromNative(WireProfile profile, CK_MECHANISM* mechanism, out WireMechanism result)
    {
        result = default;
        if (mechanism == null)
        {
            result = WireMechanism.NullMechanism;
            return CKR_OK;
        }
        ulong type = mechanism->mechanism;
        void* p = mechanism->pParameter;
        nuint length = mechanism->ulParameterLen;
        if (p == null && length != 0)
            return CKR_MECHANISM_PARAM_INVALID;

        var codec = profile.CodecFor(type);
        if (!profile.CanCarry(type))
        {
            // Version 2 peers (p11-kit 0.25.6+, our broker) take an absent parameter or plain bytes
            // for any mechanism; older peers only what p11-kit's own client carried.
            bool version2 = profile.MechanismEncoding == MechanismEncoding.TypeThenOptionalParameter;
            if (!version2 || type >= uint.MaxValue)
                return CKR_MECHANISM_INVALID;
            if (p == null)
            {
                result = new WireMechanism(type, null);
                return CKR_OK;
            }
            if (!FlatParameterMechanisms.Contains(type))
                return CKR_MECHANISM_INVALID;
            result = new WireMechanism(type, new RawParameter(Copy(p, length)));
            return CKR_OK;
        }
        if (profile.HasNoParameters(type) || p == null)
        {
            result = new WireMechanism(type, null);
            return CKR_OK;
        }

        MechanismParameter? parameter = codec switch
        {
            null => new RawParameter(Copy(p, length)),
            _ when ReferenceEquals(codec, MechanismParameterCodec.RsaPss) =>
                length == (nuint)sizeof(CK_RSA_PKCS_PSS_PARAMS) ? Pss((CK_RSA_PKCS_PSS_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.RsaOaep) =>
                length == (nuint)sizeof(CK_RSA_PKCS_OAEP_PARAMS) ? Oaep((CK_RSA_PKCS_OAEP_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.Ecdh1Derive) =>
                length == (nuint)sizeof(CK_ECDH1_DERIVE_PARAMS) ? Ecdh((CK_ECDH1_DERIVE_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.Gcm) =>
                length == (nuint)sizeof(CK_GCM_PARAMS) ? Gcm((CK_GCM_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.AesCtr) =>
                length == (nuint)sizeof(CK_AES_CTR_PARAMS) ? Ctr((CK_AES_CTR_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.MacGeneral) =>
                length == (nuint)sizeof(nuint) ? new MacGeneralParameter(*(nuint*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.IbmEcdsaOther) =>
                length == (nuint)sizeof(CK_IBM_ECDSA_OTHER_PARAMS) ? new IbmEcdsaOtherParameter(((CK_IBM_ECDSA_OTHER_PARAMS*)p)->submechanism) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.IbmAttributeBoundWrap) =>
                length == (nuint)sizeof(CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS) ? new IbmAttributeBoundWrapParameter(((CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS*)p)->hSignVerifyKey) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.IbmBtcDerive) =>
                length == (nuint)sizeof(CK_IBM_BTC_DERIVE_PARAMS) ? Btc((CK_IBM_BTC_DERIVE_PARAMS*)p) : null,
            _ when ReferenceEquals(codec, MechanismParameterCodec.IbmKyber) =>
                length == (nuint)sizeof(CK_IBM_KYBER_PARAMS) ? Kyber((CK_IBM_KYBER_PARAMS*)p) : null,
            // IVs and DH public values are plain bytes; their codecs check the sizes.
            _ => new RawParameter(Copy(p, length)),
        };
        if (parameter is null)
            return CKR_MECHANISM_PARAM_INVALID;
        result = new WireMechanism(type, parameter);
        return CKR_OK;
    }

    /// <summary>An IV of another length than the one p11-kit carries for its mechanism (see MechanismParameterCodec.IvLength).</summary>
    public static bool HasIvOfOtherLength(WireProfile profile, in WireMechanism wire) =>
        wire.Parameter is RawParameter raw && profile.CodecFor(wire.Type)?.IvLength is { } length && raw.Bytes.Length != length;

    private static byte[] Copy(void* data, nuint length)
    {
        if (data == null || length == 0) return [];
        if (length > WireWriter.MaxArrayLength) throw new ArgumentOutOfRangeException(nameof(length));
        return new ReadOnlySpan<byte>(data, (int)length).ToArray();
    }

    private static WireBytes Bytes(void* data, nuint length) =>
        data == null ? WireBytes.Null : WireBytes.Of(Copy(data, length));

    private static MechanismParameter Pss(CK_RSA_PKCS_PSS_PARAMS* p) => new RsaPssParameter(p->hashAlg, p->mgf, p->sLen);

    private static MechanismParameter Oaep(CK_RSA_PKCS_OAEP_PARAMS* p) =>
        new RsaOaepParameter(p->hashAlg, p->mgf, p->source, Bytes(p->pSourceData, p->ulSourceDataLen));

    private static MechanismParameter Ecdh(CK_ECDH1_DERIVE_PARAMS* p) =>
        new Ecdh1DeriveParameter(p->kdf, Bytes(p->pSharedData, p->ulSharedDataLen), Bytes(p->pPublicData, p->ulPublicDataLen));

    private static MechanismParameter Gcm(CK_GCM_PARAMS* p) =>
        new GcmParameter(Bytes(p->pIv, p->ulIvLen), p->ulIvBits, Bytes(p->pAAD, p->ulAADLen), p->ulTagBits);

    private static MechanismParameter Ctr(CK_AES_CTR_PARAMS* p) =>
        new AesCtrParameter(p->ulCounterBits, new ReadOnlySpan<byte>(p->cb, 16).ToArray());

    private static MechanismParameter Btc(CK_IBM_BTC_DERIVE_PARAMS* p) =>
        new IbmBtcDeriveParameter(p->type, p->childKeyIndex, Bytes(p->pChainCode, p->ulChainCodeLen), p->version);

    private static MechanismParameter Kyber(CK_IBM_KYBER_PARAMS* p) =>
        new IbmKyberParameter(p->ulVersion, p->mode, p->kdf, p->bPrepend, Bytes(p->pCipher, p->ulCipherLen),
            Bytes(p->pSharedData, p->ulSharedDataLen), p->hSecret);
}
