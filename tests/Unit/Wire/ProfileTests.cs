using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>Protocol versions 0, 1 and 2: mechanism layouts, carried mechanisms, attribute kinds, parameter codecs.</summary>
[TestFixture]
public class ProfileTests
{
    private static byte[] EncodeMechanism(WireProfile profile, WireMechanism mechanism, out ulong rv)
    {
        using var writer = new WireWriter();
        rv = MechanismCodec.Encode(writer, profile, mechanism);
        return writer.Body.ToArray();
    }

    private static WireMechanism DecodeMechanism(WireProfile profile, byte[] bytes)
    {
        var reader = new WireReader(bytes);
        Assert.That(MechanismCodec.TryDecode(reader, profile, out var mechanism), Is.True, W.ToHex(bytes));
        Assert.That(reader.AtEnd, Is.True, "whole mechanism consumed");
        return mechanism;
    }

    private static void AssertMechanism(WireProfile profile, WireMechanism mechanism, string hex)
    {
        var bytes = EncodeMechanism(profile, mechanism, out ulong rv);
        Assert.That(rv, Is.EqualTo(CKR_OK));
        Assert.That(W.ToHex(bytes), Is.EqualTo(hex.Replace(" ", "", StringComparison.Ordinal)));
        Assert.That(WireValues.ValueEquals(DecodeMechanism(profile, bytes), mechanism), Is.True);
    }

    [Test]
    public void ForMapsVersions()
    {
        Assert.That(WireProfile.For(0), Is.SameAs(WireProfile.V0));
        Assert.That(WireProfile.For(1), Is.SameAs(WireProfile.V1));
        Assert.That(WireProfile.For(2), Is.SameAs(WireProfile.V2));
        Assert.That(WireProfile.For(9), Is.SameAs(WireProfile.V2));
        Assert.That(WireProfile.V0.MechanismEncoding, Is.EqualTo(MechanismEncoding.TypeThenParameter));
        Assert.That(WireProfile.V1.MechanismEncoding, Is.EqualTo(MechanismEncoding.TypeThenParameter));
        Assert.That(WireProfile.V2.MechanismEncoding, Is.EqualTo(MechanismEncoding.TypeThenOptionalParameter));
    }

    [Test]
    public void OldLayoutSendsANullByteArrayForParameterlessMechanisms()
    {
        AssertMechanism(WireProfile.V0, new WireMechanism(CKM_RSA_PKCS, null), "00000001 ffffffff");
        AssertMechanism(WireProfile.V1, new WireMechanism(CKM_SHA256, null), "00000250 ffffffff");
        // Structured parameters follow the type directly.
        AssertMechanism(WireProfile.V0, new WireMechanism(CKM_RSA_PKCS_PSS, new RsaPssParameter(CKM_SHA256, CKG_MGF1_SHA256, 32)),
            "0000000d 0000000000000250 0000000000000002 0000000000000020");
        AssertMechanism(WireProfile.V1, new WireMechanism(CKM_AES_CBC, new RawParameter(new byte[16])),
            "00001082 00000010" + new string('0', 32));
    }

    [Test]
    public void NewLayoutSendsTypeOnlyOrAHasParameterByte()
    {
        AssertMechanism(WireProfile.V2, new WireMechanism(CKM_RSA_PKCS, null), "00000001");
        AssertMechanism(WireProfile.V2, new WireMechanism(CKM_AES_CBC, null), "00001082 00");
        AssertMechanism(WireProfile.V2, new WireMechanism(CKM_AES_CBC, new RawParameter(new byte[16])),
            "00001082 01 00000010" + new string('0', 32));
        AssertMechanism(WireProfile.V2, new WireMechanism(CKM_RSA_PKCS_PSS, new RsaPssParameter(CKM_SHA256, CKG_MGF1_SHA256, 32)),
            "0000000d 01 0000000000000250 0000000000000002 0000000000000020");
        AssertMechanism(WireProfile.V2, new WireMechanism(CKM_AES_GCM,
                new GcmParameter(WireBytes.Of(new byte[12]), 96, WireBytes.Null, 128)),
            "00001087 01 0000000c" + new string('0', 24) + "0000000000000060 ffffffff 0000000000000080");
    }

    [Test]
    public void NullMechanismIsTheMarker()
    {
        AssertMechanism(WireProfile.V1, WireMechanism.NullMechanism, "ffffffff");
        AssertMechanism(WireProfile.V2, WireMechanism.NullMechanism, "ffffffff");
    }

    [Test]
    public void UnknownMechanismsTravelAsBytesWhenReceived()
    {
        // A server decodes mechanisms it has no codec for as plain bytes (old layout: a byte array after the type).
        var v0 = DecodeMechanism(WireProfile.V0, W.Hex("80000001 00000002 abcd"));
        Assert.That(v0.Type, Is.EqualTo(0x80000001UL));
        Assert.That(((RawParameter)v0.Parameter!).Bytes.ToArray(), Is.EqualTo(new byte[] { 0xab, 0xcd }));
        var v2 = DecodeMechanism(WireProfile.V2, W.Hex("80000001 01 00000002 abcd"));
        Assert.That(((RawParameter)v2.Parameter!).Bytes.ToArray(), Is.EqualTo(new byte[] { 0xab, 0xcd }));
        Assert.That(DecodeMechanism(WireProfile.V2, W.Hex("80000001 00")).Parameter, Is.Null);
    }

    [TestCase(0, CKM_AES_CBC, false)]
    [TestCase(0, CKM_AES_GCM, false)]
    [TestCase(0, CKM_ECDH1_DERIVE, false)]
    [TestCase(0, CKM_RSA_PKCS_PSS, true)]
    [TestCase(0, CKM_SHA256_RSA_PKCS_PSS, false)]
    [TestCase(0, CKM_RSA_PKCS_OAEP, true)]
    [TestCase(0, CKM_RSA_PKCS, true)]
    [TestCase(0, CKM_SHA256_RSA_PKCS, true)]
    [TestCase(0, CKM_SHA224_RSA_PKCS, false)]
    [TestCase(0, CKM_ECDSA, true)]
    [TestCase(0, CKM_ECDSA_SHA256, false)]
    [TestCase(0, CKM_AES_ECB, true)]
    [TestCase(0, CKM_AES_CMAC, false)]
    [TestCase(1, CKM_AES_CBC, true)]
    [TestCase(1, CKM_AES_GCM, true)]
    [TestCase(1, CKM_ECDSA_SHA256, true)]
    [TestCase(1, CKM_SHA256_RSA_PKCS_PSS, true)]
    [TestCase(1, CKM_IBM_KYBER, false)]
    [TestCase(1, CKM_IBM_BTC_DERIVE, false)]
    [TestCase(2, CKM_AES_GCM, true)]
    [TestCase(2, CKM_AES_CTR, true)]
    [TestCase(2, CKM_IBM_KYBER, true)]
    [TestCase(2, CKM_IBM_ECDSA_OTHER, true)]
    [TestCase(2, CKM_DH_PKCS_DERIVE, true)]
    [TestCase(2, CKM_SHA256_HMAC_GENERAL, true)]
    [TestCase(2, CKM_AES_KEY_WRAP, false)]
    [TestCase(2, 0x80001234UL, false)]
    public void CarriedMechanisms(int version, ulong mechanism, bool carried)
    {
        var profile = WireProfile.For((byte)version);
        Assert.That(profile.CanCarry(mechanism), Is.EqualTo(carried));
        if (carried)
            return;
        var bytes = EncodeMechanism(profile, new WireMechanism(mechanism, null), out ulong rv);
        if (version < 2)
        {
            Assert.That(rv, Is.EqualTo(CKR_MECHANISM_INVALID));
            Assert.That(bytes, Is.Empty, "nothing is written for a refused mechanism");
        }
        else
        {
            // Outside p11-kit's tables, a version-2 peer still takes the mechanism with an absent
            // parameter (or plain bytes): type, then has-parameter 0.
            Assert.That(rv, Is.EqualTo(CKR_OK));
            Assert.That(bytes, Is.EqualTo(new byte[] { (byte)(mechanism >> 24), (byte)(mechanism >> 16), (byte)(mechanism >> 8), (byte)mechanism, 0 }));
        }
    }

    [Test]
    public void OldLayoutCannotSayStructuredParameterIsAbsent()
    {
        EncodeMechanism(WireProfile.V1, new WireMechanism(CKM_AES_CBC, null), out ulong rv);
        Assert.That(rv, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID));
        EncodeMechanism(WireProfile.V2, new WireMechanism(CKM_AES_CBC, null), out rv);
        Assert.That(rv, Is.EqualTo(CKR_OK));
    }

    [TestCase(CKA_DERIVE_TEMPLATE, AttributeValueKind.ByteArray, AttributeValueKind.AttributeArray, AttributeValueKind.AttributeArray)]
    [TestCase(CKA_WRAP_TEMPLATE, AttributeValueKind.AttributeArray, AttributeValueKind.AttributeArray, AttributeValueKind.AttributeArray)]
    [TestCase(CKA_ALLOWED_MECHANISMS, AttributeValueKind.MechanismTypeArray, AttributeValueKind.MechanismTypeArray, AttributeValueKind.MechanismTypeArray)]
    [TestCase(CKA_START_DATE, AttributeValueKind.Date, AttributeValueKind.Date, AttributeValueKind.Date)]
    [TestCase(CKA_TOKEN, AttributeValueKind.Byte, AttributeValueKind.Byte, AttributeValueKind.Byte)]
    [TestCase(CKA_CLASS, AttributeValueKind.ULong, AttributeValueKind.ULong, AttributeValueKind.ULong)]
    [TestCase(CKA_IBM_RESTRICTABLE, AttributeValueKind.ByteArray, AttributeValueKind.Byte, AttributeValueKind.Byte)]
    [TestCase(CKA_IBM_KEYTYPE, AttributeValueKind.ByteArray, AttributeValueKind.ULong, AttributeValueKind.ULong)]
    [TestCase(CKA_IBM_CCA_AES_KEY_MODE, AttributeValueKind.ByteArray, AttributeValueKind.ByteArray, AttributeValueKind.ULong)]
    [TestCase(CKA_VALUE, AttributeValueKind.ByteArray, AttributeValueKind.ByteArray, AttributeValueKind.ByteArray)]
    [TestCase(0x80005555UL, AttributeValueKind.ByteArray, AttributeValueKind.ByteArray, AttributeValueKind.ByteArray)]
    public void AttributeKinds(ulong type, AttributeValueKind v0, AttributeValueKind v1, AttributeValueKind v2)
    {
        Assert.That(WireProfile.V0.KindOf(type), Is.EqualTo(v0));
        Assert.That(WireProfile.V1.KindOf(type), Is.EqualTo(v1));
        Assert.That(WireProfile.V2.KindOf(type), Is.EqualTo(v2));
    }

    public static IEnumerable<TestCaseData> Parameters()
    {
        TestCaseData Case(string name, MechanismParameterCodec codec, MechanismParameter parameter, string hex) =>
            new TestCaseData(codec, parameter, hex).SetName($"Codec({name})");
        yield return Case("bytes", MechanismParameterCodec.Bytes, new RawParameter(new byte[] { 1, 2 }), "00000002 0102");
        yield return Case("bytes-empty", MechanismParameterCodec.Bytes, new RawParameter(Array.Empty<byte>()), "00000000");
        yield return Case("rsa-pss", MechanismParameterCodec.RsaPss, new RsaPssParameter(CKM_SHA_1, CKG_MGF1_SHA1, 20),
            "0000000000000220 0000000000000001 0000000000000014");
        yield return Case("rsa-oaep", MechanismParameterCodec.RsaOaep,
            new RsaOaepParameter(CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, WireBytes.Of(new byte[] { 0x4c })),
            "0000000000000250 0000000000000002 0000000000000001 00000001 4c");
        yield return Case("rsa-oaep-null-label", MechanismParameterCodec.RsaOaep,
            new RsaOaepParameter(CKM_SHA256, CKG_MGF1_SHA256, 0, WireBytes.Null),
            "0000000000000250 0000000000000002 0000000000000000 ffffffff");
        yield return Case("ecdh1", MechanismParameterCodec.Ecdh1Derive,
            new Ecdh1DeriveParameter(CKD_NULL, WireBytes.Null, WireBytes.Of(new byte[] { 4, 1, 2 })),
            "0000000000000001 ffffffff 00000003 040102");
        yield return Case("aes-iv", MechanismParameterCodec.AesIv, new RawParameter(Enumerable.Range(0, 16).Select(i => (byte)i).ToArray()),
            "00000010 000102030405060708090a0b0c0d0e0f");
        yield return Case("des-iv", MechanismParameterCodec.DesIv, new RawParameter(new byte[8]), "00000008 0000000000000000");
        yield return Case("aes-ctr", MechanismParameterCodec.AesCtr, new AesCtrParameter(128, new byte[16]),
            "0000000000000080 00000010" + new string('0', 32));
        yield return Case("gcm", MechanismParameterCodec.Gcm,
            new GcmParameter(WireBytes.Of(new byte[] { 1 }), 8, WireBytes.Of(new byte[] { 2, 3 }), 96),
            "00000001 01 0000000000000008 00000002 0203 0000000000000060");
        yield return Case("mac-general", MechanismParameterCodec.MacGeneral, new MacGeneralParameter(16), "0000000000000010");
        yield return Case("dh-derive", MechanismParameterCodec.DhDerive, new RawParameter(new byte[] { 7 }), "00000001 07");
        yield return Case("ibm-ecdsa-other", MechanismParameterCodec.IbmEcdsaOther, new IbmEcdsaOtherParameter(3), "0000000000000003");
        yield return Case("ibm-btc", MechanismParameterCodec.IbmBtcDerive,
            new IbmBtcDeriveParameter(1, 0x80000000, WireBytes.Of(new byte[] { 9 }), 2),
            "0000000000000001 0000000080000000 00000001 09 0000000000000002");
        yield return Case("ibm-kyber", MechanismParameterCodec.IbmKyber,
            new IbmKyberParameter(0, 1, 2, 1, WireBytes.Null, WireBytes.Of(new byte[] { 5 }), 6),
            "0000000000000000 0000000000000001 0000000000000002 01 ffffffff 00000001 05 0000000000000006");
        yield return Case("ibm-attrbound", MechanismParameterCodec.IbmAttributeBoundWrap, new IbmAttributeBoundWrapParameter(42),
            "000000000000002a");
    }

    [TestCaseSource(nameof(Parameters))]
    public void ParameterCodecsRoundTrip(MechanismParameterCodec codec, MechanismParameter parameter, string hex)
    {
        using var writer = new WireWriter();
        Assert.That(codec.Encode(writer, parameter), Is.True);
        Assert.That(W.ToHex(writer.Body), Is.EqualTo(hex.Replace(" ", "", StringComparison.Ordinal)));
        var bytes = writer.Body.ToArray();
        var reader = new WireReader(bytes);
        Assert.That(codec.TryDecode(reader, out var decoded), Is.True);
        Assert.That(reader.AtEnd, Is.True);
        Assert.That(WireValues.ValueEquals(new WireMechanism(1, decoded), new WireMechanism(1, parameter)), Is.True, codec.Name);
        // Every truncation is refused.
        for (int length = 0; length < bytes.Length; length++)
            Assert.That(codec.TryDecode(new WireReader(bytes.AsMemory(0, length)), out _), Is.False, $"{codec.Name} truncated to {length}");
    }

    public static IEnumerable<TestCaseData> Refusals()
    {
        TestCaseData Case(string name, MechanismParameterCodec codec, MechanismParameter parameter) =>
            new TestCaseData(codec, parameter).SetName($"Refused({name})");
        yield return Case("aes-iv-15", MechanismParameterCodec.AesIv, new RawParameter(new byte[15]));
        yield return Case("aes-iv-17", MechanismParameterCodec.AesIv, new RawParameter(new byte[17]));
        yield return Case("aes-iv-0", MechanismParameterCodec.AesIv, new RawParameter(Array.Empty<byte>()));
        yield return Case("des-iv-7", MechanismParameterCodec.DesIv, new RawParameter(new byte[7]));
        yield return Case("aes-ctr-15", MechanismParameterCodec.AesCtr, new AesCtrParameter(128, new byte[15]));
        yield return Case("dh-derive-0", MechanismParameterCodec.DhDerive, new RawParameter(Array.Empty<byte>()));
        yield return Case("rsa-pss-wrong-type", MechanismParameterCodec.RsaPss, new MacGeneralParameter(1));
        yield return Case("bytes-wrong-type", MechanismParameterCodec.Bytes, new RsaPssParameter(1, 1, 1));
        yield return Case("gcm-wrong-type", MechanismParameterCodec.Gcm, new RawParameter(new byte[12]));
    }

    [TestCaseSource(nameof(Refusals))]
    public void ParameterCodecsRefuseWhatP11KitRefuses(MechanismParameterCodec codec, MechanismParameter parameter)
    {
        using var writer = new WireWriter();
        Assert.That(codec.Encode(writer, parameter), Is.False);
    }

    [TestCase("00000000", "dh-derive")]       // DH public value of 0 bytes
    [TestCase("ffffffff", "dh-derive")]       // NULL
    [TestCase("ffffffff", "aes-iv")]
    [TestCase("ffffffff", "des-iv")]
    [TestCase("0000000000000080 0000000f 000102030405060708090a0b0c0d0e", "aes-ctr")]
    [TestCase("7fffffff", "bytes")]
    public void ParameterDecodersRefuseMalformedInput(string hex, string codecName)
    {
        var codec = new[] { MechanismParameterCodec.DhDerive, MechanismParameterCodec.AesIv, MechanismParameterCodec.DesIv,
            MechanismParameterCodec.AesCtr, MechanismParameterCodec.Bytes }.Single(c => c.Name == codecName);
        Assert.That(codec.TryDecode(new WireReader(W.Hex(hex)), out _), Is.False);
    }

    [Test]
    public void RefusedParametersMakeTheMechanismInvalid()
    {
        EncodeMechanism(WireProfile.V2, new WireMechanism(CKM_AES_CBC, new RawParameter(new byte[15])), out ulong rv);
        Assert.That(rv, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID));
        EncodeMechanism(WireProfile.V2, new WireMechanism(CKM_DH_PKCS_DERIVE, new RawParameter(Array.Empty<byte>())), out rv);
        Assert.That(rv, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID));
        EncodeMechanism(WireProfile.V0, new WireMechanism(CKM_RSA_PKCS_PSS, new RawParameter(new byte[24])), out rv);
        Assert.That(rv, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID));
    }

    /// <summary>
    /// An IV of another length is refused toward p11-kit (which cannot take it), sent as it is to our
    /// broker, and taken by our decoder: the backend judges it, in its own terms.
    /// </summary>
    [TestCase(CKM_AES_CBC, 15, "00001082 01 0000000f 000102030405060708090a0b0c0d0e")]
    [TestCase(CKM_AES_CBC_PAD, 17, "00001085 01 00000011 000102030405060708090a0b0c0d0e0f10")]
    [TestCase(CKM_DES3_CBC, 7, "00000133 01 00000007 00010203040506")]
    public void IvsOfAnotherLengthGoToOurBrokerAsTheyAre(ulong type, int length, string hex)
    {
        var mechanism = new WireMechanism(type, new RawParameter(Enumerable.Range(0, length).Select(i => (byte)i).ToArray()));
        EncodeMechanism(WireProfile.V2, mechanism, out ulong rv);
        Assert.That(rv, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID), "toward a p11-kit peer");
        using var writer = new WireWriter();
        Assert.That(MechanismCodec.Encode(writer, WireProfile.V2, mechanism, anyIvLength: true), Is.EqualTo(CKR_OK), "toward our broker");
        Assert.That(W.ToHex(writer.Body), Is.EqualTo(hex.Replace(" ", "", StringComparison.Ordinal)));
        Assert.That(MechanismCodec.TryDecode(new WireReader(writer.Body.ToArray()), WireProfile.V2, out var decoded), Is.True, "decoded");
        Assert.That(WireValues.ValueEquals(decoded, mechanism), Is.True, "the same IV");
    }

    [TestCase(2, CKM_AES_CBC, "00001082 01 00000010 000102030405060708090a0b0c0d0e0f")]
    [TestCase(2, CKM_DES3_CBC, "00000133 01 00000008 0001020304050607")]
    [TestCase(1, CKM_AES_CTS, "00001089 00000010 000102030405060708090a0b0c0d0e0f")]
    public void IvMechanismsUseTheirFixedSize(int version, ulong type, string hex)
    {
        var profile = WireProfile.For((byte)version);
        var size = profile.CodecFor(type) == MechanismParameterCodec.AesIv ? 16 : 8;
        AssertMechanism(profile, new WireMechanism(type, new RawParameter(Enumerable.Range(0, size).Select(i => (byte)i).ToArray())), hex);
    }

    public static IEnumerable<TestCaseData> Updates()
    {
        TestCaseData Case(string name, ulong type, MechanismUpdate update, string hex) =>
            new TestCaseData(type, update, hex).SetName($"Update({name})");
        yield return Case("kyber-encap-data", CKM_IBM_KYBER, new MechanismUpdate(true, 1, true, WireBytes.Of(new byte[] { 1, 2 }), 2), "01 01 01 00000002 0102");
        yield return Case("kyber-encap-length", CKM_IBM_KYBER, new MechanismUpdate(true, 1, false, WireBytes.Null, 1568), "01 01 00 00000620");
        yield return Case("kyber-decap", CKM_IBM_KYBER, new MechanismUpdate(true, 2, false, WireBytes.Null, 0), "01 02");
        yield return Case("btc-data", CKM_IBM_BTC_DERIVE, new MechanismUpdate(true, 0, true, WireBytes.Of(new byte[32]), 32), "01 01 00000020" + new string('0', 64));
        yield return Case("btc-length", CKM_IBM_BTC_DERIVE, new MechanismUpdate(true, 0, false, WireBytes.Null, 32), "01 00 00000020");
        yield return Case("none", CKM_IBM_BTC_DERIVE, new MechanismUpdate(false, 0, false, WireBytes.Null, 0), "00");
        yield return Case("no-update-codec", CKM_ECDH1_DERIVE, new MechanismUpdate(true, 0, false, WireBytes.Null, 0), "01");
        yield return Case("parameterless", CKM_SHA256, default, "");
    }

    [TestCaseSource(nameof(Updates))]
    public void MechanismUpdatesRoundTrip(ulong type, MechanismUpdate update, string hex)
    {
        using var writer = new WireWriter();
        MechanismCodec.EncodeUpdate(writer, WireProfile.V2, type, update);
        Assert.That(W.ToHex(writer.Body), Is.EqualTo(hex.Replace(" ", "", StringComparison.Ordinal)));
        var reader = new WireReader(writer.Body.ToArray());
        Assert.That(MechanismCodec.TryDecodeUpdate(reader, WireProfile.V2, type, out var decoded), Is.True);
        Assert.That(reader.AtEnd, Is.True);
        Assert.That(WireValues.ValueEquals(decoded, update), Is.True);
    }
}
