using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>The call table, and an encode → parse → decode round trip for every call in both directions.</summary>
[TestFixture]
public class CallTableTests
{
    [Test]
    public void IdsAreContiguousAndNamedAfterTheCalls()
    {
        // p11-kit 0.26: ERROR plus 89 calls, P11_RPC_CALL_MAX = 90 (ids 0..89).
        Assert.That(CallTable.Count, Is.EqualTo(90));
        Assert.That(CallTable.All, Has.Count.EqualTo(90));
        for (int i = 0; i < CallTable.Count; i++)
        {
            var call = CallTable.All[i];
            Assert.That((int)call.Id, Is.EqualTo(i));
            Assert.That(CallTable.Get((RpcCallId)i), Is.SameAs(call));
            Assert.That(CallTable.TryGet((uint)i, out var byId) && ReferenceEquals(byId, call), Is.True);
            if (i == 0)
                Assert.That(call.Name, Is.EqualTo("Error"));
            else
                Assert.That(call.Name, Does.StartWith("C_"));
            Assert.That(CallTable.TryGetByName(call.Name, out var byName) && ReferenceEquals(byName, call), Is.True);
            Assert.That(Signature.Format(call.Request), Is.EqualTo(call.RequestSignature));
            Assert.That(Signature.Format(call.Response), Is.EqualTo(call.ResponseSignature));
        }
        Assert.That(CallTable.TryGet(90, out _), Is.False);
        Assert.That(CallTable.TryGet(94, out _), Is.False);
        Assert.That(CallTable.TryGet(uint.MaxValue, out _), Is.False);
    }

    // A few rows literally as in p11-kit 0.26's rpc-message.h.
    [TestCase(RpcCallId.Error, "", "u", 0)]
    [TestCase(RpcCallId.C_Initialize, "ayyay", "", 0)]
    [TestCase(RpcCallId.C_GetInfo, "", "vsusv", 0)]
    [TestCase(RpcCallId.C_GetTokenInfo, "u", "ssssuuuuuuuuuuuvvs", 0)]
    [TestCase(RpcCallId.C_Login, "uuay", "", 0)]
    [TestCase(RpcCallId.C_GetAttributeValue, "uufA", "aAu", 0)]
    [TestCase(RpcCallId.C_GenerateKeyPair, "uMaAaA", "uu", 0)]
    [TestCase(RpcCallId.C_UnwrapKey, "uMuayaA", "u", 0)]
    [TestCase(RpcCallId.C_WaitForSlotEvent, "u", "u", 0)]
    [TestCase(RpcCallId.C_LoginUser, "uuayay", "", 1)]
    [TestCase(RpcCallId.C_EncryptMessageNext, "uayayfyu", "ay", 1)]
    [TestCase(RpcCallId.C_SignMessageNext, "uayayyfy", "ay", 1)]
    [TestCase(RpcCallId.C_InitToken2, "uays", "", 1)]
    [TestCase(RpcCallId.C_DeriveKey2, "uMuaA", "uPu", 2)]
    public void SignaturesMatchP11Kit(RpcCallId id, string request, string response, int minVersion)
    {
        var call = CallTable.Get(id);
        Assert.That(call.RequestSignature, Is.EqualTo(request));
        Assert.That(call.ResponseSignature, Is.EqualTo(response));
        Assert.That(call.MinProtocolVersion, Is.EqualTo(minVersion));
    }

    [Test]
    public void ProtocolVersionsIntroduceTheDocumentedCalls()
    {
        Assert.That(CallTable.All.Where(c => c.MinProtocolVersion == 0).Select(c => (int)c.Id).ToArray(), Is.EqualTo(Enumerable.Range(0, 66).ToArray()));
        Assert.That(CallTable.All.Where(c => c.MinProtocolVersion == 1).Select(c => (int)c.Id).ToArray(), Is.EqualTo(Enumerable.Range(66, 23).ToArray()));
        Assert.That(CallTable.Get(RpcCallId.C_WaitForSlotEvent).Id, Is.EqualTo((RpcCallId)65));
        Assert.That(CallTable.Get(RpcCallId.C_InitToken2).Id, Is.EqualTo((RpcCallId)88));
        Assert.That(CallTable.All.Where(c => c.MinProtocolVersion == 2).Select(c => c.Id), Is.EqualTo(new[] { (RpcCallId)89 }));
        Assert.That(CallTable.Handshake.ToArray(), Is.EqualTo(W.Ascii("PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1")));
    }

    [TestCase("", new WireType[0])]
    [TestCase("yuzsvMP", new[] { WireType.Byte, WireType.ULong, WireType.ZeroString, WireType.SpaceString, WireType.Version, WireType.Mechanism, WireType.MechanismUpdate })]
    [TestCase("ayfyaufuaAfA", new[] { WireType.ByteArray, WireType.ByteBuffer, WireType.ULongArray, WireType.ULongBuffer, WireType.AttributeArray, WireType.AttributeBuffer })]
    public void SignatureStringsParse(string text, WireType[] expected) =>
        Assert.That(Signature.Parse(text), Is.EqualTo(expected));

    [TestCase("a")]
    [TestCase("ux")]
    [TestCase("az")]
    [TestCase("fM")]
    public void BadSignatureStringsAreRefused(string text) =>
        Assert.Throws<FormatException>(() => Signature.Parse(text));

    public static IEnumerable<TestCaseData> EveryCall()
    {
        foreach (var call in CallTable.All)
            foreach (var kind in new[] { MessageKind.Request, MessageKind.Response })
            {
                if (call.Id == RpcCallId.Error && kind == MessageKind.Request)
                    continue;
                foreach (var profile in W.Profiles)
                {
                    if (kind == MessageKind.Request && !profile.Knows(call))
                        continue;
                    if (call.Id == RpcCallId.C_DeriveKey2 && profile.Version < 2)
                        continue; // its mechanism (IBM Kyber) is only carried by version 2
                    for (int variant = 0; variant < 2; variant++)
                        yield return new TestCaseData(call.Name, kind, (int)profile.Version, variant)
                            .SetName($"RoundTrip({call.Name},{kind},V{profile.Version},variant {variant})");
                }
            }
    }

    [TestCaseSource(nameof(EveryCall))]
    public void EveryCallRoundTrips(string name, MessageKind kind, int version, int variant)
    {
        Assert.That(CallTable.TryGetByName(name, out var call) || name == "Error", Is.True);
        call ??= CallTable.Get(RpcCallId.Error);
        var profile = WireProfile.For((byte)version);
        var values = W.SampleValues(call, kind, profile, variant);
        ulong? mechanismType = call.Id == RpcCallId.C_DeriveKey2 ? CKM_IBM_KYBER : null;

        var body = W.Encode(profile, call, kind, values, mechanismType);
        var decoded = W.Decode(profile, body, kind, mechanismType);
        W.AssertValuesEqual(values, decoded, $"{name} {kind} V{version}");

        // And the re-encoding of the decoded values is byte-identical.
        Assert.That(W.ToHex(W.Encode(profile, call, kind, decoded, mechanismType)), Is.EqualTo(W.ToHex(body)));

        // The body starts with the call id and the signature as a byte array.
        var signature = call.SignatureFor(kind);
        Assert.That(W.ToHex(body.AsSpan(0, 8 + signature.Length)),
            Is.EqualTo(W.ToHex(W.Body((uint)call.Id, signature))));
    }

    public static IEnumerable<TestCaseData> CallsUnknownToVersions()
    {
        foreach (var call in CallTable.All)
            foreach (var profile in W.Profiles)
                if (!profile.Knows(call))
                    yield return new TestCaseData(call.Name, (int)profile.Version).SetName($"Unknown({call.Name},V{profile.Version})");
    }

    [TestCaseSource(nameof(CallsUnknownToVersions))]
    public void RequestsForNewerCallsAreRefusedByOlderProfiles(string name, int version)
    {
        Assert.That(CallTable.TryGetByName(name, out var call), Is.True);
        var body = W.Encode(WireProfile.V2, call, MessageKind.Request, W.SampleValues(call, MessageKind.Request, WireProfile.V2, 0),
            CKM_IBM_KYBER);
        var reader = new RpcMessageReader(WireProfile.For((byte)version));
        Assert.That(reader.Parse(body, MessageKind.Request), Is.EqualTo(ParseStatus.CallUnknownToVersion));
        Assert.That(WireProfile.For((byte)version).Knows(call), Is.False);
    }

    [Test]
    public void ErrorResponseCarriesTheReturnValue()
    {
        using var writer = new RpcMessageWriter(WireProfile.V0);
        writer.BeginError(CKR_PIN_INCORRECT);
        Assert.That(writer.Complete, Is.True);
        Assert.That(W.ToHex(writer.Writer.Body), Is.EqualTo("00000000" + "00000001" + "75" + "00000000000000a0"));
        var reader = new RpcMessageReader(WireProfile.V0);
        Assert.That(reader.Parse(writer.Writer.Body.ToArray(), MessageKind.Response), Is.EqualTo(ParseStatus.Ok));
        Assert.That(reader.IsError, Is.True);
        Assert.That(reader.ErrorCode, Is.EqualTo(CKR_PIN_INCORRECT));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Response, out var values), Is.True);
        Assert.That(values, Is.EqualTo(new object?[] { CKR_PIN_INCORRECT }));
    }

    [Test]
    public void EncodeRefusesWrongValues()
    {
        using var writer = new RpcMessageWriter(WireProfile.V2);
        var login = CallTable.Get(RpcCallId.C_Login);
        Assert.Throws<ArgumentException>(() => WireValues.Encode(writer, login, MessageKind.Request, [1UL, 1UL]));
        Assert.Throws<ArgumentException>(() => WireValues.Encode(writer, login, MessageKind.Request, [1UL, 1UL, W.Ascii("1234")]));
        Assert.Throws<ArgumentException>(() => WireValues.Encode(writer, CallTable.Get(RpcCallId.C_GetInfo), MessageKind.Response,
            [new WireVersion(2, 40), W.Ascii("short"), 0UL, W.SpaceString(32, ""), new WireVersion(0, 1)]));
        Assert.Throws<ArgumentException>(() => WireValues.Encode(writer, CallTable.Get(RpcCallId.C_DeriveKey2), MessageKind.Response,
            [1UL, new MechanismUpdate(), 0UL]));
    }

    [Test]
    public void MechanismTheProfileCannotCarryLeavesTheWriterFailed()
    {
        using var writer = new RpcMessageWriter(WireProfile.V0);
        WireValues.Encode(writer, CallTable.Get(RpcCallId.C_EncryptInit), MessageKind.Request,
            [1UL, new WireMechanism(CKM_AES_CBC, new RawParameter(new byte[16])), 2UL]);
        Assert.That(writer.Failed, Is.True);
        Assert.That(writer.Complete, Is.False);
    }

    [Test]
    public void MechanismUpdateTakesTheTypeFromTheCaller()
    {
        var call = CallTable.Get(RpcCallId.C_DeriveKey2);
        var update = new MechanismUpdate(true, 0, true, WireBytes.Of(new byte[32]), 32);
        var body = W.Encode(WireProfile.V2, call, MessageKind.Response, [7UL, update, 0UL], CKM_IBM_BTC_DERIVE);
        // u, has-parameter, has-data, byte array, u
        Assert.That(W.ToHex(body.AsSpan(8 + 3)), Is.EqualTo("0000000000000007" + "01" + "01" + "00000020" + new string('0', 64) + "0000000000000000"));
        var reader = new RpcMessageReader(WireProfile.V2);
        Assert.That(reader.Parse(body, MessageKind.Response), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Response, out _), Is.False, "no mechanism type: cannot decode 'P'");
        W.AssertValuesEqual([7UL, update, 0UL], W.Decode(WireProfile.V2, body, MessageKind.Response, CKM_IBM_BTC_DERIVE), "BTC");
    }
}
