using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>
/// Peer behaviours found while writing the golden-vector tests: old p11-kit releases send flat
/// 'fA' entries and know no NULL-mechanism marker; a NULL CKA_ALLOWED_MECHANISMS must not put the
/// stream out of step.
/// </summary>
[TestFixture]
public class CompatibilityTests
{
    [Test]
    public void Version0AttributeBuffersAreFlat()
    {
        // What p11-kit-client.so 0.24.1 sends for C_GetAttributeValue(CKA_WRAP_TEMPLATE: 48-byte buffer, CKA_CLASS: 8).
        var body = W.Body((uint)RpcCallId.C_GetAttributeValue, "uufA", W.U64(1), W.U64(2), W.U32(2),
            W.U32((uint)CKA_WRAP_TEMPLATE), W.U32(48), W.U32((uint)CKA_CLASS), W.U32(8));
        var values = W.Decode(WireProfile.V0, body, MessageKind.Request);
        var buffers = (WireAttributeBuffer[])values[2]!;
        Assert.That(buffers.Select(b => (b.Type, b.Length)), Is.EqualTo(new[] { (CKA_WRAP_TEMPLATE, 48u), (CKA_CLASS, 8u) }));
    }

    [Test]
    public void Version0CannotSendTheNullMechanism()
    {
        using var writer = new WireWriter();
        Assert.That(MechanismCodec.Encode(writer, WireProfile.V0, WireMechanism.NullMechanism), Is.EqualTo(CKR_ARGUMENTS_BAD));
        Assert.That(writer.Length, Is.Zero);
    }

    [Test]
    public void NullMechanismTypeArrayStaysInStep()
    {
        // A size answer for CKA_ALLOWED_MECHANISMS (pValue NULL, ulValueLen 16) followed by CKA_TOKEN.
        using var writer = new WireWriter();
        writer.WriteUInt32(2);
        AttributeCodec.WriteFlat(writer, WireProfile.V2, CKA_ALLOWED_MECHANISMS, 16, default, valueIsNull: true);
        AttributeCodec.WriteFlat(writer, WireProfile.V2, CKA_TOKEN, 1, [1], valueIsNull: false);
        var reader = new WireReader(writer.Body.ToArray());
        Assert.That(AttributeCodec.TryReadArray(reader, WireProfile.V2, out var attributes), Is.True);
        Assert.That(reader.AtEnd, Is.True);
        Assert.That(attributes.Select(a => (a.Type, a.Length)), Is.EqualTo(new[] { (CKA_ALLOWED_MECHANISMS, 16u), (CKA_TOKEN, 1u) }));
    }
}
