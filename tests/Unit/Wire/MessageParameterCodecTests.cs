using System.Text;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>
/// The typed per-message parameters ('T', 'U') of the message-based calls: byte-exact encodings,
/// round trips, hostile input (truncation at every byte, unknown forms, buffers over the limit,
/// lengths that disagree), the typed call table rows, and the capability announcement.
/// </summary>
[TestFixture]
public class MessageParameterCodecTests
{
    private static readonly WireProfile Typed = WireProfile.V2.WithTypedMessageParameters(true);

    private static byte[] Encode(in WireMessageParameter parameter)
    {
        using var writer = new WireWriter();
        MessageParameterCodec.Encode(writer, parameter);
        return writer.Body.ToArray();
    }

    private static bool Decode(byte[] bytes, out WireMessageParameter parameter)
    {
        var reader = new WireReader(bytes);
        return MessageParameterCodec.TryDecode(reader, out parameter) && reader.AtEnd;
    }

    [Test]
    public void GcmIsByteExact()
    {
        var gcm = WireMessageParameter.Gcm(WireBytes.Of(W.Hex("000102030405060708090a0b")), 32, CKG_GENERATE_COUNTER,
            WireBytes.Of(new byte[16]), 128);
        Assert.That(W.ToHex(Encode(gcm)), Is.EqualTo(
            "01" + "0000000c" + "000102030405060708090a0b" + "0000000000000020" + "0000000000000002" +
            "00000010" + "00000000000000000000000000000000" + "0000000000000080"));
        Assert.That(Decode(Encode(gcm), out var back), Is.True);
        Assert.That(WireValues.ValueEquals(back, gcm), Is.True);
    }

    [Test]
    public void CcmAndChaChaAndAbsentRoundTrip()
    {
        var ccm = WireMessageParameter.Ccm(100, WireBytes.Of(new byte[13]), 8, CKG_GENERATE_RANDOM, WireBytes.Of(new byte[12]));
        Assert.That(W.ToHex(Encode(ccm)), Is.EqualTo("02" + "0000000000000064" + "0000000d" + new string('0', 26) +
            "0000000000000008" + "0000000000000003" + "0000000c" + new string('0', 24)));
        var chacha = WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Of(new byte[16]));
        Assert.That(W.ToHex(Encode(chacha)), Is.EqualTo("03" + "0000000c" + new string('0', 24) + "00000010" + new string('0', 32)));
        Assert.That(W.ToHex(Encode(WireMessageParameter.Absent)), Is.EqualTo("00"));
        foreach (var parameter in new[] { ccm, chacha, WireMessageParameter.Absent })
        {
            Assert.That(Decode(Encode(parameter), out var back), Is.True, parameter.Form.ToString());
            Assert.That(WireValues.ValueEquals(back, parameter), Is.True, parameter.Form.ToString());
        }
    }

    [Test]
    public void NullBuffersStayNull()
    {
        var gcm = WireMessageParameter.Gcm(WireBytes.Null, 0, CKG_NO_GENERATE, WireBytes.Null, 0);
        Assert.That(W.ToHex(Encode(gcm)), Is.EqualTo("01" + "ffffffff" + new string('0', 32) + "ffffffff" + new string('0', 16)));
        Assert.That(Decode(Encode(gcm), out var back), Is.True);
        Assert.That(back.Iv.IsNull && back.Tag.IsNull, Is.True);
    }

    [Test]
    public void TruncationAtEveryByteIsRefused()
    {
        foreach (var parameter in new[]
                 {
                     WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 3, WireBytes.Of(new byte[16]), 128),
                     WireMessageParameter.Ccm(7, WireBytes.Of(new byte[13]), 0, 0, WireBytes.Of(new byte[8])),
                     WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Of(new byte[16])),
                 })
        {
            var bytes = Encode(parameter);
            for (int length = 0; length < bytes.Length; length++)
                Assert.That(MessageParameterCodec.TryDecode(new WireReader(bytes.AsMemory(0, length)), out _), Is.False,
                    $"{parameter.Form}: accepted {length} of {bytes.Length} bytes");
        }
    }

    [TestCase((byte)4)]
    [TestCase((byte)0x80)]
    [TestCase((byte)0xff)]
    public void UnknownFormsAreRefused(byte form) =>
        Assert.That(MessageParameterCodec.TryDecode(new WireReader(new byte[] { form, 0, 0, 0, 0 }), out _), Is.False);

    [TestCase(4097u)]
    [TestCase(0x7ffffffeu)]
    [TestCase(0xfffffffeu)]
    public void BuffersOverTheLimitAreRefused(uint length)
    {
        // A ChaCha nonce announcing more than 4 KiB, with that much actually present when it fits.
        var body = new List<byte> { 3 };
        body.AddRange(W.U32(length));
        if (length <= 8192) body.AddRange(new byte[length]);
        body.AddRange(W.U32(16));
        body.AddRange(new byte[16]);
        Assert.That(MessageParameterCodec.TryDecode(new WireReader(body.ToArray()), out _), Is.False);
        // The update too.
        Assert.That(MessageParameterCodec.TryDecodeUpdate(new WireReader(body.Skip(1).ToArray()), out _), Is.False);
    }

    [Test]
    public void AnIvOfExactlyTheLimitIsCarried()
    {
        var gcm = WireMessageParameter.Gcm(WireBytes.Of(new byte[MessageParameterCodec.MaxBufferLength]), 0, 0, WireBytes.Of(new byte[16]), 128);
        Assert.That(Decode(Encode(gcm), out var back), Is.True);
        Assert.That(MessageParameterCodec.Problem(back), Is.Null);
    }

    public static IEnumerable<TestCaseData> Inconsistent()
    {
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 0, WireBytes.Of(new byte[12]), 128)).SetName("GcmTagShorterThanTagBits");
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 0, WireBytes.Of(new byte[16]), 96)).SetName("GcmTagLongerThanTagBits");
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 0, WireBytes.Null, 128)).SetName("GcmNullTagWithTagBits");
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 0, WireBytes.Null, ulong.MaxValue)).SetName("GcmTagBitsWrappingAround");
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 0, 0, WireBytes.Of(new byte[1]), ulong.MaxValue - 6)).SetName("GcmTagBitsWrappingToOne");
        yield return new TestCaseData(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 97, 0, WireBytes.Of(new byte[16]), 128)).SetName("GcmMoreFixedBitsThanIv");
        yield return new TestCaseData(WireMessageParameter.Ccm(0, WireBytes.Of(new byte[7]), 57, 0, WireBytes.Of(new byte[8]))).SetName("CcmMoreFixedBitsThanNonce");
        yield return new TestCaseData(WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Null)).SetName("ChaChaNullTag");
        yield return new TestCaseData(WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Of(new byte[15]))).SetName("ChaChaShortTag");
        yield return new TestCaseData(WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Of(new byte[17]))).SetName("ChaChaLongTag");
    }

    [TestCaseSource(nameof(Inconsistent))]
    public void InconsistentStructuresAreRefused(WireMessageParameter parameter)
    {
        Assert.That(MessageParameterCodec.Problem(parameter), Is.Not.Null);
        // They decode (the bytes are well formed): it is the broker's check that refuses them.
        Assert.That(Decode(Encode(parameter), out _), Is.True);
    }

    [Test]
    public void ConsistentStructuresPass()
    {
        Assert.That(MessageParameterCodec.Problem(WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 96, 2, WireBytes.Of(new byte[12]), 96)), Is.Null);
        Assert.That(MessageParameterCodec.Problem(WireMessageParameter.Gcm(WireBytes.Null, 0, 0, WireBytes.Null, 0)), Is.Null);
        Assert.That(MessageParameterCodec.Problem(WireMessageParameter.Ccm(5, WireBytes.Of(new byte[7]), 56, 2, WireBytes.Null)), Is.Null);
        Assert.That(MessageParameterCodec.Problem(WireMessageParameter.SalsaChaChaPoly(WireBytes.Null, WireBytes.Of(new byte[16]))), Is.Null);
    }

    [Test]
    public void UpdatesRoundTrip()
    {
        var update = new MessageParameterUpdate(WireBytes.Of(new byte[] { 9, 8, 7 }), WireBytes.Null);
        using var writer = new WireWriter();
        MessageParameterCodec.EncodeUpdate(writer, update);
        Assert.That(W.ToHex(writer.Body), Is.EqualTo("00000003090807ffffffff"));
        Assert.That(MessageParameterCodec.TryDecodeUpdate(new WireReader(writer.Body.ToArray()), out var back), Is.True);
        Assert.That(WireValues.ValueEquals(back, update), Is.True);
    }

    [TestCase(CKM_AES_GCM, MessageParameterForm.Gcm)]
    [TestCase(CKM_AES_CCM, MessageParameterForm.Ccm)]
    [TestCase(CKM_CHACHA20_POLY1305, MessageParameterForm.SalsaChaChaPoly)]
    [TestCase(CKM_SALSA20_POLY1305, MessageParameterForm.SalsaChaChaPoly)]
    [TestCase(CKM_AES_CBC, MessageParameterForm.Absent)]
    [TestCase(CKM_SHA256_HMAC, MessageParameterForm.Absent)]
    public void TheMechanismDecidesTheForm(ulong mechanism, MessageParameterForm form) =>
        Assert.That(MessageParameterCodec.FormFor(mechanism), Is.EqualTo(form));

    // ---- the call table's typed rows ----------------------------------------------------------------------

    private static readonly RpcCallId[] TypedCalls =
    [
        RpcCallId.C_EncryptMessage, RpcCallId.C_EncryptMessageBegin, RpcCallId.C_EncryptMessageNext,
        RpcCallId.C_DecryptMessage, RpcCallId.C_DecryptMessageBegin, RpcCallId.C_DecryptMessageNext,
    ];

    [Test]
    public void ExactlyTheEncryptionAndDecryptionCallsHaveATypedForm()
    {
        Assert.That(CallTable.All.Where(c => c.HasTypedForm).Select(c => c.Id), Is.EquivalentTo(TypedCalls));
        foreach (var id in TypedCalls)
        {
            var call = CallTable.Get(id);
            // Never p11-kit's signature: a p11-kit peer handed one refuses it instead of reading raw bytes.
            Assert.That(call.TypedRequestSignature, Is.Not.EqualTo(call.RequestSignature), id.ToString());
            Assert.That(call.TypedRequestSignature, Does.Contain("T"), id.ToString());
            Assert.That(call.TypedResponseSignature, Does.StartWith("uU"), id.ToString());
            // The typed request is p11-kit's with its first 'ay' (the parameter) as 'T'.
            Assert.That(call.TypedRequestSignature, Is.EqualTo("u" + "T" + call.RequestSignature[3..]), id.ToString());
        }
    }

    public static IEnumerable<TestCaseData> TypedCallCases() =>
        from id in TypedCalls
        from kind in new[] { MessageKind.Request, MessageKind.Response }
        from variant in Enumerable.Range(0, 4)
        select new TestCaseData(id, kind, variant).SetName($"TypedRoundTrip({id},{kind},variant {variant})");

    [TestCaseSource(nameof(TypedCallCases))]
    public void TypedCallsRoundTrip(RpcCallId id, MessageKind kind, int variant)
    {
        var call = CallTable.Get(id);
        var values = W.SampleValues(call, kind, Typed, variant);
        var body = W.Encode(Typed, call, kind, values);
        W.AssertValuesEqual(values, W.Decode(Typed, body, kind), $"{id} {kind}");
        string signature = kind == MessageKind.Request ? call.TypedRequestSignature! : call.TypedResponseSignature!;
        Assert.That(W.ToHex(body.AsSpan(0, 8 + signature.Length)), Is.EqualTo(W.ToHex(W.Body((uint)id, signature))));
        // A peer without the typed form refuses the message at its signature (as p11-kit's parser does).
        Assert.That(new RpcMessageReader(WireProfile.V2).Parse(body, kind), Is.EqualTo(ParseStatus.BadSignature));
        // A peer with it still reads p11-kit's form, from a client that did not take up the offer.
        var plain = W.Encode(WireProfile.V2, call, kind, W.SampleValues(call, kind, WireProfile.V2, variant));
        var reader = new RpcMessageReader(Typed);
        Assert.That(reader.Parse(plain, kind), Is.EqualTo(ParseStatus.Ok));
        Assert.That(reader.TypedForm, Is.False);
        Assert.That(WireValues.TryDecode(reader, kind, out _), Is.True);
        Assert.That(reader.Parse(body, kind), Is.EqualTo(ParseStatus.Ok));
        Assert.That(reader.TypedForm, Is.True);
    }

    [Test]
    public void TypedProfilesKeepEverythingElse()
    {
        foreach (var profile in W.Profiles)
        {
            var typed = profile.WithTypedMessageParameters(true);
            Assert.That(typed.TypedMessageParameters, Is.True);
            Assert.That(profile.TypedMessageParameters, Is.False);
            Assert.That(typed.Version, Is.EqualTo(profile.Version));
            Assert.That(typed.MechanismEncoding, Is.EqualTo(profile.MechanismEncoding));
            Assert.That(typed.WithTypedMessageParameters(false), Is.SameAs(profile));
            Assert.That(profile.WithTypedMessageParameters(true), Is.SameAs(typed));
            // Calls without a typed form keep p11-kit's signatures.
            var login = CallTable.Get(RpcCallId.C_Login);
            Assert.That(login.TypedFor(typed), Is.False);
            Assert.That(CallTable.Get(RpcCallId.C_EncryptMessage).TypedFor(typed), Is.True);
            Assert.That(CallTable.Get(RpcCallId.C_EncryptMessage).TypedFor(profile), Is.False);
        }
    }

    // ---- the announcement -----------------------------------------------------------------------------------

    [Test]
    public void TheAnnouncementNamesTheCapability()
    {
        Assert.That(Capabilities.Announces(Capabilities.Announcement, Capabilities.TypedMessageParameters), Is.True);
        Assert.That(Encoding.ASCII.GetString(Capabilities.Announcement), Is.EqualTo("p11proxy-capabilities: typed-message-parameters/1"));
    }

    [TestCase("")]
    [TestCase("client")]                                            // p11-kit-client.so's options
    [TestCase("p11-kit-trust")]                                     // a remote: module's name
    [TestCase("typed-message-parameters/1")]                        // no prefix: not ours
    [TestCase("p11proxy-capabilities:")]
    [TestCase("p11proxy-capabilities: typed-message-parameters/2")] // a later encoding this module does not speak
    [TestCase("p11proxy-capabilities: typed-message-parameters/10")]
    [TestCase("p11proxy-capabilities: xtyped-message-parameters/1")]
    [TestCase("P11PROXY-CAPABILITIES: typed-message-parameters/1")]
    public void OtherOptionsAnnounceNothing(string options) =>
        Assert.That(Capabilities.Announces(Encoding.UTF8.GetBytes(options), Capabilities.TypedMessageParameters), Is.False);

    [Test]
    public void LaterCapabilitiesBesideItAreFine() =>
        Assert.That(Capabilities.Announces("p11proxy-capabilities: something-new/3 typed-message-parameters/1"u8,
            Capabilities.TypedMessageParameters), Is.True);

    [Test]
    public void GarbageOptionsAnnounceNothing()
    {
        Assert.That(Capabilities.Announces([0x70, 0x31, 0xff, 0xfe, 0x00], Capabilities.TypedMessageParameters), Is.False);
        var huge = Encoding.ASCII.GetBytes("p11proxy-capabilities: " + new string('x', 5000) + " typed-message-parameters/1");
        Assert.That(Capabilities.Announces(huge, Capabilities.TypedMessageParameters), Is.False);
    }

    [Test]
    public void OnlyClientsWithoutOptionsAreOffered()
    {
        Assert.That(Capabilities.ClientMayBeOurs([]), Is.True);
        Assert.That(Capabilities.ClientMayBeOurs("client"u8), Is.False);
    }
}
