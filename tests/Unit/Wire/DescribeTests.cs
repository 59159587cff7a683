using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>WireValues.Describe: short dumps for logs that never show a PIN.</summary>
[TestFixture]
public class DescribeTests
{
    private static readonly byte[] Pin = W.Ascii("s3cr3t-PIN");

    public static IEnumerable<TestCaseData> PinCalls()
    {
        yield return new TestCaseData(RpcCallId.C_Login, new List<object?> { 1UL, CKU_USER, WireByteArray.Of(Pin) }, 1);
        yield return new TestCaseData(RpcCallId.C_InitPIN, new List<object?> { 1UL, WireByteArray.Of(Pin) }, 1);
        yield return new TestCaseData(RpcCallId.C_SetPIN, new List<object?> { 1UL, WireByteArray.Of(Pin), WireByteArray.Of(Pin) }, 2);
        yield return new TestCaseData(RpcCallId.C_InitToken, new List<object?> { 0UL, WireByteArray.Of(Pin), W.Ascii("label") }, 1);
        yield return new TestCaseData(RpcCallId.C_InitToken2, new List<object?> { 0UL, WireByteArray.Of(Pin), W.SpaceString(32, "label") }, 1);
        yield return new TestCaseData(RpcCallId.C_LoginUser, new List<object?> { 1UL, CKU_USER, WireByteArray.Of(Pin), WireByteArray.Of(W.Ascii("alice")) }, 1);
    }

    [TestCaseSource(nameof(PinCalls))]
    public void PinsAreRedacted(RpcCallId id, List<object?> values, int redactions)
    {
        var call = CallTable.Get(id);
        var text = WireValues.Describe(call, MessageKind.Request, values);
        Assert.That(text, Does.StartWith(call.Name));
        Assert.That(text, Does.Not.Contain("s3cr3t").And.Not.Contain(W.ToHex(Pin)).And.Not.Contain(W.ToHex(Pin.AsSpan(0, 8))));
        Assert.That(text.Split($"<redacted {Pin.Length} bytes>").Length - 1, Is.EqualTo(redactions), text);
        // And the same values still round-trip (redaction is only in the dump).
        var body = W.Encode(WireProfile.V2, call, MessageKind.Request, values);
        W.AssertValuesEqual(values, W.Decode(WireProfile.V2, body, MessageKind.Request), id.ToString());
    }

    [Test]
    public void SecretPartsAreExactlyThePins()
    {
        var secret = CallTable.All
            .SelectMany(c => Enumerable.Range(0, c.Request.Length).Where(i => WireValues.IsSecret(c.Id, MessageKind.Request, i)).Select(i => $"{c.Name}:{i}"))
            .ToArray();
        Assert.That(secret, Is.EquivalentTo(new[] { "C_InitToken:1", "C_InitPIN:1", "C_SetPIN:1", "C_SetPIN:2", "C_Login:2", "C_LoginUser:2", "C_InitToken2:1" }));
        foreach (var part in secret)
        {
            CallTable.TryGetByName(part.Split(':')[0], out var call);
            Assert.That(call.Request[int.Parse(part.Split(':')[1], System.Globalization.CultureInfo.InvariantCulture)], Is.EqualTo(WireType.ByteArray), part);
        }
        Assert.That(WireValues.IsSecret(RpcCallId.C_Login, MessageKind.Response, 2), Is.False);
    }

    [Test]
    public void DescriptionsAreShortAndReadable()
    {
        var text = WireValues.Describe(CallTable.Get(RpcCallId.C_CreateObject), MessageKind.Request,
            [5UL, new[] { W.ULong(CKA_CLASS, CKO_CERTIFICATE), W.Bytes(CKA_VALUE, new byte[4000]), W.Unavailable(WireProfile.V2, CKA_ID) }]);
        Assert.That(text, Does.Contain("CKA_CLASS=1").And.Contain("CKA_VALUE=4000 bytes").And.Contain("CKA_ID=unavailable"));
        Assert.That(text.Length, Is.LessThan(200), text);

        text = WireValues.Describe(CallTable.Get(RpcCallId.Error), MessageKind.Response, [CKR_PIN_INCORRECT]);
        Assert.That(text, Does.Contain("CKR_PIN_INCORRECT"));

        text = WireValues.Describe(CallTable.Get(RpcCallId.C_SignInit), MessageKind.Request,
            [1UL, new WireMechanism(CKM_RSA_PKCS_PSS, new RsaPssParameter(CKM_SHA256, CKG_MGF1_SHA256, 32)), 2UL]);
        Assert.That(text, Does.Contain("CKM_RSA_PKCS_PSS").And.Contain("CKM_SHA256"));
    }
}
