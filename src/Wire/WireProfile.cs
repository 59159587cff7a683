using System.Collections.Frozen;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire;

/// <summary>How a mechanism is laid out on the wire.</summary>
public enum MechanismEncoding
{
    /// <summary>p11-kit before 0.25.6: type, then the parameter (a NULL byte array when there is none).</summary>
    TypeThenParameter,

    /// <summary>p11-kit 0.25.6 and later: type only for parameterless mechanisms, else a has-parameter byte first.</summary>
    TypeThenOptionalParameter,
}

/// <summary>
/// What a peer of a given negotiated protocol version understands. p11-kit changed the
/// attribute map, the set of serialisable mechanism parameters and the mechanism layout between
/// releases, and only some of these changes bumped the protocol version:
///   version 0: p11-kit up to 0.24 (Debian 12 ships 0.24.1);
///   version 1: p11-kit 0.25.0 to 0.25.5 (PKCS#11 3.0 calls, C_InitToken2);
///   version 2: p11-kit 0.25.6 and later (C_DeriveKey2, new mechanism layout).
/// A client negotiating version 2 with a 0.26 server gets 2; an old server answers 0.
/// </summary>
public sealed class WireProfile
{
    public const byte MaxVersion = 2;

    private readonly FrozenSet<ulong> _noParameterMechanisms;
    private readonly FrozenDictionary<ulong, MechanismParameterCodec> _parameterCodecs;
    private readonly FrozenDictionary<ulong, AttributeValueKind> _attributeKinds;

    private WireProfile(byte version, MechanismEncoding encoding, FrozenSet<ulong> noParameters,
        FrozenDictionary<ulong, MechanismParameterCodec> codecs, FrozenDictionary<ulong, AttributeValueKind> kinds)
    {
        Version = version;
        MechanismEncoding = encoding;
        _noParameterMechanisms = noParameters;
        _parameterCodecs = codecs;
        _attributeKinds = kinds;
        _typed = new WireProfile(this);
    }

    /// <summary>The same profile with typed message parameters.</summary>
    private WireProfile(WireProfile plain)
    {
        Version = plain.Version;
        MechanismEncoding = plain.MechanismEncoding;
        _noParameterMechanisms = plain._noParameterMechanisms;
        _parameterCodecs = plain._parameterCodecs;
        _attributeKinds = plain._attributeKinds;
        TypedMessageParameters = true;
        _plain = plain;
        _typed = this;
    }

    private readonly WireProfile _typed;
    private readonly WireProfile? _plain;

    /// <summary>
    /// Whether the message-based calls carry their per-message parameter by value (p11proxy's
    /// <see cref="Capabilities.TypedMessageParameters"/>, between our module and our broker) rather
    /// than in p11-kit's form, which a p11proxy peer only accepts without a parameter.
    /// </summary>
    public bool TypedMessageParameters { get; }

    /// <summary>This profile with (or without) typed message parameters; the protocol version is unchanged.</summary>
    public WireProfile WithTypedMessageParameters(bool typed) => typed ? _typed : _plain ?? this;

    public byte Version { get; }
    public MechanismEncoding MechanismEncoding { get; }

    /// <summary>
    /// Whether 'fA' entries of template attributes carry their nested entries: p11-kit does so
    /// since 0.25.4, older peers send type and length only. Version 1 spans 0.25.0 to 0.25.5; it
    /// is taken to nest, as the later releases of that series do.
    /// </summary>
    public bool NestedAttributeBuffers => Version >= 1;

    /// <summary>Whether a NULL CK_MECHANISM (0xffffffff marker) can be sent: p11-kit 0.24 has no such marker.</summary>
    public bool HasNullMechanismMarker => Version >= 1;

    public static WireProfile V0 { get; }
    public static WireProfile V1 { get; }
    public static WireProfile V2 { get; }

    public static WireProfile For(byte version) => version switch
    {
        0 => V0,
        1 => V1,
        _ => V2,
    };

    /// <summary>Whether calls introduced in a protocol version can be sent to this peer.</summary>
    public bool Knows(RpcCall call) => call.MinProtocolVersion <= Version;

    public AttributeValueKind KindOf(ulong attributeType) =>
        _attributeKinds.TryGetValue(attributeType, out var kind) ? kind : AttributeValueKind.ByteArray;

    public bool HasNoParameters(ulong mechanism) => _noParameterMechanisms.Contains(mechanism);

    /// <summary>The structured codec for a mechanism's parameter, or null when it travels as plain bytes.</summary>
    public MechanismParameterCodec? CodecFor(ulong mechanism) =>
        _parameterCodecs.TryGetValue(mechanism, out var codec) ? codec : null;

    /// <summary>
    /// p11-kit's client carries only mechanisms it knows to be parameterless or whose parameter it can
    /// serialise; it hides the others from C_GetMechanismList and refuses them at *Init with
    /// CKR_MECHANISM_INVALID. We do the same per peer version so the behaviour matches p11-kit's.
    /// </summary>
    public bool CanCarry(ulong mechanism) =>
        _noParameterMechanisms.Contains(mechanism) || _parameterCodecs.ContainsKey(mechanism);

    static WireProfile()
    {
        var noParameters = new HashSet<ulong>(NoParameterMechanisms);
        var noParameters024 = new HashSet<ulong>(noParameters);
        noParameters024.ExceptWith(NoParameterMechanismsAddedIn0250);

        var codecs = StructuredParameterCodecs();
        var codecs0250 = codecs.Where(entry => !CodecsAddedIn0256.Contains(entry.Key)).ToDictionary();
        var codecs024 = codecs.Where(entry => entry.Key is CKM_RSA_PKCS_PSS or CKM_RSA_PKCS_OAEP).ToDictionary();

        var kinds = AttributeKinds(ibm0250: true, ibm0256: true, deriveTemplate: true);
        V0 = new WireProfile(0, MechanismEncoding.TypeThenParameter, noParameters024.ToFrozenSet(),
            codecs024.ToFrozenDictionary(), AttributeKinds(ibm0250: false, ibm0256: false, deriveTemplate: false));
        V1 = new WireProfile(1, MechanismEncoding.TypeThenParameter, noParameters.ToFrozenSet(),
            codecs0250.ToFrozenDictionary(), AttributeKinds(ibm0250: true, ibm0256: false, deriveTemplate: true));
        V2 = new WireProfile(2, MechanismEncoding.TypeThenOptionalParameter, noParameters.ToFrozenSet(),
            codecs.ToFrozenDictionary(), kinds);
    }

    private static Dictionary<ulong, MechanismParameterCodec> StructuredParameterCodecs()
    {
        var codecs = new Dictionary<ulong, MechanismParameterCodec>
        {
            [CKM_IBM_ECDSA_OTHER] = MechanismParameterCodec.IbmEcdsaOther,
            [CKM_IBM_BTC_DERIVE] = MechanismParameterCodec.IbmBtcDerive,
            [CKM_IBM_KYBER] = MechanismParameterCodec.IbmKyber,
            [CKM_RSA_PKCS_OAEP] = MechanismParameterCodec.RsaOaep,
            [CKM_ECDH1_DERIVE] = MechanismParameterCodec.Ecdh1Derive,
            [CKM_IBM_ATTRIBUTEBOUND_WRAP] = MechanismParameterCodec.IbmAttributeBoundWrap,
            [CKM_IBM_EC_X25519] = MechanismParameterCodec.Ecdh1Derive,
            [CKM_IBM_EC_X448] = MechanismParameterCodec.Ecdh1Derive,
            [CKM_AES_CTR] = MechanismParameterCodec.AesCtr,
            [CKM_AES_GCM] = MechanismParameterCodec.Gcm,
            [CKM_DH_PKCS_DERIVE] = MechanismParameterCodec.DhDerive,
        };
        foreach (var pss in new[] { CKM_RSA_PKCS_PSS, CKM_SHA1_RSA_PKCS_PSS, CKM_SHA224_RSA_PKCS_PSS,
                     CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS })
            codecs[pss] = MechanismParameterCodec.RsaPss;
        foreach (var aesIv in new[] { CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_OFB, CKM_AES_CFB1, CKM_AES_CFB8,
                     CKM_AES_CFB64, CKM_AES_CFB128, CKM_AES_CTS })
            codecs[aesIv] = MechanismParameterCodec.AesIv;
        foreach (var desIv in new[] { CKM_DES_CBC, CKM_DES_CBC_PAD, CKM_DES3_CBC, CKM_DES3_CBC_PAD, CKM_DES_CFB8,
                     CKM_DES_CFB64, CKM_DES_OFB64 })
            codecs[desIv] = MechanismParameterCodec.DesIv;
        foreach (var macGeneral in new[] { CKM_SHA_1_HMAC_GENERAL, CKM_SHA224_HMAC_GENERAL, CKM_SHA256_HMAC_GENERAL,
                     CKM_SHA384_HMAC_GENERAL, CKM_SHA512_HMAC_GENERAL, CKM_SHA512_224_HMAC_GENERAL,
                     CKM_SHA512_256_HMAC_GENERAL, CKM_AES_MAC_GENERAL, CKM_AES_CMAC_GENERAL, CKM_DES3_MAC_GENERAL,
                     CKM_DES3_CMAC_GENERAL })
            codecs[macGeneral] = MechanismParameterCodec.MacGeneral;
        return codecs;
    }

    private static readonly ulong[] CodecsAddedIn0256 = [CKM_IBM_BTC_DERIVE, CKM_IBM_ECDSA_OTHER, CKM_IBM_KYBER];

    /// <summary>Mechanisms p11-kit treats as taking no parameter (its list is, by its own words, incomplete).</summary>
    private static readonly ulong[] NoParameterMechanisms =
    [
        CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_X9_31_KEY_PAIR_GEN, CKM_RSA_PKCS, CKM_RSA_9796, CKM_RSA_X_509,
        CKM_RSA_X9_31, CKM_MD2_RSA_PKCS, CKM_MD5_RSA_PKCS, CKM_SHA1_RSA_PKCS, CKM_SHA224_RSA_PKCS,
        CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS, CKM_RIPEMD128_RSA_PKCS,
        CKM_RIPEMD160_RSA_PKCS, CKM_SHA1_RSA_X9_31, CKM_DSA_KEY_PAIR_GEN, CKM_DSA_PARAMETER_GEN, CKM_DSA,
        CKM_DSA_SHA1, CKM_FORTEZZA_TIMESTAMP, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, CKM_ECDSA_SHA1, CKM_ECDSA_SHA224,
        CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512, CKM_DH_PKCS_KEY_PAIR_GEN, CKM_DH_PKCS_PARAMETER_GEN,
        CKM_X9_42_DH_KEY_PAIR_GEN, CKM_X9_42_DH_PARAMETER_GEN, CKM_KEA_KEY_PAIR_GEN, CKM_GENERIC_SECRET_KEY_GEN,
        CKM_RC2_KEY_GEN, CKM_RC4_KEY_GEN, CKM_RC4, CKM_RC5_KEY_GEN, CKM_AES_KEY_GEN, CKM_AES_ECB, CKM_AES_MAC,
        CKM_AES_CMAC, CKM_DES_KEY_GEN, CKM_DES2_KEY_GEN, CKM_DES3_KEY_GEN, CKM_CDMF_KEY_GEN, CKM_CAST_KEY_GEN,
        CKM_CAST3_KEY_GEN, CKM_CAST128_KEY_GEN, CKM_IDEA_KEY_GEN, CKM_SSL3_PRE_MASTER_KEY_GEN,
        CKM_TLS_PRE_MASTER_KEY_GEN, CKM_SKIPJACK_KEY_GEN, CKM_BATON_KEY_GEN, CKM_JUNIPER_KEY_GEN, CKM_RC2_ECB,
        CKM_DES_ECB, CKM_DES3_ECB, CKM_CDMF_ECB, CKM_CAST_ECB, CKM_CAST3_ECB, CKM_CAST128_ECB, CKM_RC5_ECB,
        CKM_IDEA_ECB, CKM_RC2_MAC, CKM_DES_MAC, CKM_DES3_MAC, CKM_DES3_CMAC, CKM_CDMF_MAC, CKM_CAST_MAC,
        CKM_CAST3_MAC, CKM_RC5_MAC, CKM_IDEA_MAC, CKM_SSL3_MD5_MAC, CKM_SSL3_SHA1_MAC, CKM_SKIPJACK_WRAP,
        CKM_BATON_WRAP, CKM_JUNIPER_WRAP, CKM_MD2, CKM_MD2_HMAC, CKM_MD5, CKM_MD5_HMAC, CKM_SHA_1, CKM_SHA_1_HMAC,
        CKM_SHA1_KEY_DERIVATION, CKM_SHA224, CKM_SHA224_HMAC, CKM_SHA224_KEY_DERIVATION, CKM_SHA256,
        CKM_SHA256_HMAC, CKM_SHA256_KEY_DERIVATION, CKM_SHA384, CKM_SHA384_HMAC, CKM_SHA384_KEY_DERIVATION,
        CKM_SHA512, CKM_SHA512_HMAC, CKM_SHA512_KEY_DERIVATION, CKM_SHA512_T, CKM_SHA512_T_HMAC,
        CKM_SHA512_T_KEY_DERIVATION, CKM_SHA512_224, CKM_SHA512_224_HMAC, CKM_SHA512_224_KEY_DERIVATION,
        CKM_SHA512_256, CKM_SHA512_256_HMAC, CKM_SHA512_256_KEY_DERIVATION, CKM_FASTHASH, CKM_RIPEMD128,
        CKM_RIPEMD128_HMAC, CKM_RIPEMD160, CKM_RIPEMD160_HMAC, CKM_KEY_WRAP_LYNKS, CKM_IBM_SHA3_224,
        CKM_IBM_SHA3_256, CKM_IBM_SHA3_384, CKM_IBM_SHA3_512, CKM_IBM_CMAC, CKM_IBM_DILITHIUM,
        CKM_IBM_SHA3_224_HMAC, CKM_IBM_SHA3_256_HMAC, CKM_IBM_SHA3_384_HMAC, CKM_IBM_SHA3_512_HMAC,
        CKM_IBM_ED25519_SHA512, CKM_IBM_ED448_SHA3,
    ];

    /// <summary>Entries p11-kit 0.24 lacked: its client refuses these mechanisms.</summary>
    private static readonly ulong[] NoParameterMechanismsAddedIn0250 =
    [
        CKM_AES_CMAC, CKM_DES3_CMAC, CKM_ECDSA_SHA224, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512,
        CKM_IBM_CMAC, CKM_IBM_DILITHIUM, CKM_IBM_ED25519_SHA512, CKM_IBM_ED448_SHA3, CKM_IBM_SHA3_224,
        CKM_IBM_SHA3_224_HMAC, CKM_IBM_SHA3_256, CKM_IBM_SHA3_256_HMAC, CKM_IBM_SHA3_384, CKM_IBM_SHA3_384_HMAC,
        CKM_IBM_SHA3_512, CKM_IBM_SHA3_512_HMAC, CKM_SHA1_KEY_DERIVATION, CKM_SHA224, CKM_SHA224_HMAC,
        CKM_SHA224_KEY_DERIVATION, CKM_SHA224_RSA_PKCS, CKM_SHA256_KEY_DERIVATION, CKM_SHA384_KEY_DERIVATION,
        CKM_SHA512_224, CKM_SHA512_224_HMAC, CKM_SHA512_224_KEY_DERIVATION, CKM_SHA512_256, CKM_SHA512_256_HMAC,
        CKM_SHA512_256_KEY_DERIVATION, CKM_SHA512_KEY_DERIVATION, CKM_SHA512_T, CKM_SHA512_T_HMAC,
        CKM_SHA512_T_KEY_DERIVATION,
    ];

    private static FrozenDictionary<ulong, AttributeValueKind> AttributeKinds(bool ibm0250, bool ibm0256, bool deriveTemplate)
    {
        var kinds = new Dictionary<ulong, AttributeValueKind>();
        void Set(AttributeValueKind kind, params ulong[] types)
        {
            foreach (var type in types) kinds[type] = kind;
        }

        Set(AttributeValueKind.Byte, CKA_TOKEN, CKA_PRIVATE, CKA_TRUSTED, CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT,
            CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_SIGN_RECOVER, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_DERIVE,
            CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_MODIFIABLE, CKA_COPYABLE,
            CKA_SECONDARY_AUTH, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED, CKA_RESET_ON_INIT, CKA_HAS_RESET,
            CKA_COLOR);
        Set(AttributeValueKind.ULong, CKA_CLASS, CKA_CERTIFICATE_TYPE, CKA_CERTIFICATE_CATEGORY,
            CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_KEY_TYPE, CKA_MODULUS_BITS, CKA_PRIME_BITS, CKA_SUB_PRIME_BITS,
            CKA_VALUE_BITS, CKA_VALUE_LEN, CKA_KEY_GEN_MECHANISM, CKA_AUTH_PIN_FLAGS, CKA_HW_FEATURE_TYPE,
            CKA_PIXEL_X, CKA_PIXEL_Y, CKA_RESOLUTION, CKA_CHAR_ROWS, CKA_CHAR_COLUMNS, CKA_BITS_PER_PIXEL,
            CKA_MECHANISM_TYPE);
        Set(AttributeValueKind.AttributeArray, CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE);
        if (deriveTemplate)
            Set(AttributeValueKind.AttributeArray, CKA_DERIVE_TEMPLATE);
        Set(AttributeValueKind.MechanismTypeArray, CKA_ALLOWED_MECHANISMS);
        Set(AttributeValueKind.Date, CKA_START_DATE, CKA_END_DATE);
        if (ibm0250)
        {
            Set(AttributeValueKind.Byte, CKA_IBM_RESTRICTABLE, CKA_IBM_NEVER_MODIFIABLE, CKA_IBM_RETAINKEY,
                CKA_IBM_ATTRBOUND, CKA_IBM_USE_AS_DATA, CKA_IBM_PROTKEY_EXTRACTABLE,
                CKA_IBM_PROTKEY_NEVER_EXTRACTABLE);
            Set(AttributeValueKind.ULong, CKA_IBM_DILITHIUM_KEYFORM, CKA_IBM_STD_COMPLIANCE1, CKA_IBM_KEYTYPE);
        }
        if (ibm0256)
            Set(AttributeValueKind.ULong, CKA_IBM_CCA_AES_KEY_MODE, CKA_IBM_KYBER_KEYFORM);
        // Every other type, the IBM byte strings included, is a plain byte array.
        return kinds.ToFrozenDictionary();
    }
}
