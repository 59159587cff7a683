namespace P11Proxy.Wire;

/// <summary>
/// Serialisers for mechanism parameters, one per layout p11-kit defines (rpc-message.c).
/// Encoding refuses values p11-kit refuses (wrong IV sizes, empty DH value); decoding never
/// trusts a length beyond what the message holds.
/// </summary>
public sealed class MechanismParameterCodec
{
    private readonly Func<WireWriter, MechanismParameter, bool> _encode;
    private readonly Func<WireReader, MechanismParameter?> _decode;

    private MechanismParameterCodec(string name, Func<WireWriter, MechanismParameter, bool> encode,
        Func<WireReader, MechanismParameter?> decode, int? ivLength = null)
    {
        Name = name;
        _encode = encode;
        _decode = decode;
        IvLength = ivLength;
    }

    public string Name { get; }

    /// <summary>
    /// For the IV codecs, the only length p11-kit carries (its encoder fails on another, its decoder
    /// refuses it). The bytes travel as a plain byte array either way, so our broker takes any
    /// length and leaves the judgement to the backend; our module sends another length only to it.
    /// </summary>
    public int? IvLength { get; }

    public override string ToString() => Name;

    /// <summary>Writes the parameter; false when it does not fit this layout (the call must fail).</summary>
    public bool Encode(WireWriter writer, MechanismParameter parameter) => _encode(writer, parameter);

    public bool TryDecode(WireReader reader, out MechanismParameter parameter)
    {
        parameter = _decode(reader)!;
        return parameter is not null;
    }

    /// <summary>Parameter bytes as they are: what p11-kit uses for mechanisms without a structured codec.</summary>
    public static readonly MechanismParameterCodec Bytes = new("bytes",
        (writer, p) =>
        {
            if (p is not RawParameter raw) return false;
            writer.WriteByteArray(raw.Bytes.Span);
            return true;
        },
        reader => WireBytes.TryRead(reader, out var bytes) ? new RawParameter(bytes.IsNull ? ReadOnlyMemory<byte>.Empty : bytes.Data) : null);

    public static readonly MechanismParameterCodec RsaPss = new("rsa-pss",
        (writer, p) =>
        {
            if (p is not RsaPssParameter pss) return false;
            writer.WriteUInt64(pss.HashAlgorithm);
            writer.WriteUInt64(pss.Mgf);
            writer.WriteUInt64(pss.SaltLength);
            return true;
        },
        reader => reader.TryReadUInt64(out var hash) && reader.TryReadUInt64(out var mgf) && reader.TryReadUInt64(out var salt)
            ? new RsaPssParameter(hash, mgf, salt) : null);

    public static readonly MechanismParameterCodec RsaOaep = new("rsa-oaep",
        (writer, p) =>
        {
            if (p is not RsaOaepParameter oaep) return false;
            writer.WriteUInt64(oaep.HashAlgorithm);
            writer.WriteUInt64(oaep.Mgf);
            writer.WriteUInt64(oaep.Source);
            oaep.SourceData.Write(writer);
            return true;
        },
        reader => reader.TryReadUInt64(out var hash) && reader.TryReadUInt64(out var mgf) &&
                  reader.TryReadUInt64(out var source) && WireBytes.TryRead(reader, out var data)
            ? new RsaOaepParameter(hash, mgf, source, data) : null);

    public static readonly MechanismParameterCodec Ecdh1Derive = new("ecdh1-derive",
        (writer, p) =>
        {
            if (p is not Ecdh1DeriveParameter ecdh) return false;
            writer.WriteUInt64(ecdh.Kdf);
            ecdh.SharedData.Write(writer);
            ecdh.PublicData.Write(writer);
            return true;
        },
        reader => reader.TryReadUInt64(out var kdf) && WireBytes.TryRead(reader, out var shared) &&
                  WireBytes.TryRead(reader, out var pub)
            ? new Ecdh1DeriveParameter(kdf, shared, pub) : null);

    public static readonly MechanismParameterCodec AesIv = FixedBytes("aes-iv", 16);
    public static readonly MechanismParameterCodec DesIv = FixedBytes("des-iv", 8);

    public static readonly MechanismParameterCodec AesCtr = new("aes-ctr",
        (writer, p) =>
        {
            if (p is not AesCtrParameter ctr || ctr.CounterBlock.Length != 16) return false;
            writer.WriteUInt64(ctr.CounterBits);
            writer.WriteByteArray(ctr.CounterBlock.Span);
            return true;
        },
        reader => reader.TryReadUInt64(out var bits) && reader.TryReadByteArray(out var block, out bool isNull) &&
                  !isNull && block.Length == 16
            ? new AesCtrParameter(bits, block) : null);

    public static readonly MechanismParameterCodec Gcm = new("aes-gcm",
        (writer, p) =>
        {
            if (p is not GcmParameter gcm) return false;
            gcm.Iv.Write(writer);
            writer.WriteUInt64(gcm.IvBits);
            gcm.Aad.Write(writer);
            writer.WriteUInt64(gcm.TagBits);
            return true;
        },
        reader => WireBytes.TryRead(reader, out var iv) && reader.TryReadUInt64(out var ivBits) &&
                  WireBytes.TryRead(reader, out var aad) && reader.TryReadUInt64(out var tagBits)
            ? new GcmParameter(iv, ivBits, aad, tagBits) : null);

    public static readonly MechanismParameterCodec MacGeneral = new("mac-general",
        (writer, p) =>
        {
            if (p is not MacGeneralParameter mac) return false;
            writer.WriteUInt64(mac.Length);
            return true;
        },
        reader => reader.TryReadUInt64(out var length) ? new MacGeneralParameter(length) : null);

    /// <summary>CKM_DH_PKCS_DERIVE: the other party's public value, never empty.</summary>
    public static readonly MechanismParameterCodec DhDerive = new("dh-derive",
        (writer, p) =>
        {
            if (p is not RawParameter raw || raw.Bytes.IsEmpty) return false;
            writer.WriteByteArray(raw.Bytes.Span);
            return true;
        },
        reader => reader.TryReadByteArray(out var data, out bool isNull) && !isNull && !data.IsEmpty
            ? new RawParameter(data) : null);

    public static readonly MechanismParameterCodec IbmEcdsaOther = new("ibm-ecdsa-other",
        (writer, p) =>
        {
            if (p is not IbmEcdsaOtherParameter other) return false;
            writer.WriteUInt64(other.Submechanism);
            return true;
        },
        reader => reader.TryReadUInt64(out var sub) ? new IbmEcdsaOtherParameter(sub) : null);

    public static readonly MechanismParameterCodec IbmBtcDerive = new("ibm-btc-derive",
        (writer, p) =>
        {
            if (p is not IbmBtcDeriveParameter btc) return false;
            writer.WriteUInt64(btc.Type);
            writer.WriteUInt64(btc.ChildKeyIndex);
            btc.ChainCode.Write(writer);
            writer.WriteUInt64(btc.Version);
            return true;
        },
        reader => reader.TryReadUInt64(out var type) && reader.TryReadUInt64(out var index) &&
                  WireBytes.TryRead(reader, out var chain) && reader.TryReadUInt64(out var version)
            ? new IbmBtcDeriveParameter(type, index, chain, version) : null);

    public static readonly MechanismParameterCodec IbmKyber = new("ibm-kyber",
        (writer, p) =>
        {
            if (p is not IbmKyberParameter kyber) return false;
            writer.WriteUInt64(kyber.Version);
            writer.WriteUInt64(kyber.Mode);
            writer.WriteUInt64(kyber.Kdf);
            writer.WriteByte(kyber.Prepend);
            kyber.Cipher.Write(writer);
            kyber.SharedData.Write(writer);
            writer.WriteUInt64(kyber.Secret);
            return true;
        },
        reader => reader.TryReadUInt64(out var version) && reader.TryReadUInt64(out var mode) &&
                  reader.TryReadUInt64(out var kdf) && reader.TryReadByte(out var prepend) &&
                  WireBytes.TryRead(reader, out var cipher) && WireBytes.TryRead(reader, out var shared) &&
                  reader.TryReadUInt64(out var secret)
            ? new IbmKyberParameter(version, mode, kdf, prepend, cipher, shared, secret) : null);

    public static readonly MechanismParameterCodec IbmAttributeBoundWrap = new("ibm-attrbound-wrap",
        (writer, p) =>
        {
            if (p is not IbmAttributeBoundWrapParameter wrap) return false;
            writer.WriteUInt64(wrap.SignVerifyKey);
            return true;
        },
        reader => reader.TryReadUInt64(out var key) ? new IbmAttributeBoundWrapParameter(key) : null);

    private static MechanismParameterCodec FixedBytes(string name, int size) => new(name,
        (writer, p) =>
        {
            if (p is not RawParameter raw || raw.Bytes.Length != size) return false;
            writer.WriteByteArray(raw.Bytes.Span);
            return true;
        },
        // Any length is taken: a wrong one is the backend's to refuse, in its own terms.
        reader => reader.TryReadByteArray(out var data, out bool isNull) && !isNull ? new RawParameter(data) : null,
        size);
}
