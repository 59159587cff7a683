using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using P11Proxy.Wire.Edge;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.CrossSide;

/// <summary>
/// Issue 15's known disagreement: a C_GetAttributeValue template entry for an attribute-array
/// attribute (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE) with a non-NULL pValue
/// and ulValueLen 0, followed by CKA_LABEL. The module's encoder and the broker's decoder must
/// agree on it (SoftHSM direct answers CKR_OK; the broker used to drop the connection).
/// </summary>
public sealed unsafe class GetAttributeValueBugTests
{
    [TestCase(CKA_WRAP_TEMPLATE), TestCase(CKA_UNWRAP_TEMPLATE), TestCase(CKA_DERIVE_TEMPLATE)]
    public void ZeroLengthTemplateBufferThenLabelIsDecodedByTheBroker(ulong templateType)
    {
        foreach (var profile in new[] { WireProfile.V0, WireProfile.V1, WireProfile.V2 })
        {
            CK_ATTRIBUTE inner = default;
            byte* label = stackalloc byte[32];
            var template = stackalloc CK_ATTRIBUTE[2];
            template[0] = new CK_ATTRIBUTE { type = (nuint)templateType, pValue = &inner, ulValueLen = 0 };
            template[1] = new CK_ATTRIBUTE { type = (nuint)CKA_LABEL, pValue = label, ulValueLen = 32 };

            // The module's encoder of the caller's template.
            using var request = new RpcMessageWriter(profile);
            request.Begin(CallTable.Get(RpcCallId.C_GetAttributeValue), MessageKind.Request);
            request.WriteULong(1);
            request.WriteULong(2);
            Assert.That(CallerArguments.WriteAttributeBuffers(request, template, 2), Is.EqualTo(CKR_OK));
            Assert.That(request.Complete, Is.True);

            // The broker's decoder of the request.
            var reader = new RpcMessageReader(profile);
            Assert.That(reader.Parse(request.Writer.Body.ToArray(), MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
            Assert.That(reader.TryReadULong(out _) && reader.TryReadULong(out _), Is.True);
            Assert.That(reader.TryReadAttributeBuffer(64 << 20, out var buffers), Is.True,
                $"v{profile.Version}: the broker refuses the module's request as malformed (it closes the connection)");
            Assert.That(reader.Complete, Is.True, $"v{profile.Version}: bytes left over after the template");
            Assert.That(reader.ReadP11KitClientForm, Is.False, $"v{profile.Version}: read only as p11-kit's client form, which p11-kit's server misreads");
            Assert.That(buffers.Select(b => (b.Type, b.Length)),
                Is.EqualTo(new[] { (templateType, 0u), ((ulong)CKA_LABEL, 32u) }), $"v{profile.Version}");
        }
    }

    /// <summary>
    /// p11-kit's client (0.25.4 on) writes an empty nested count after such an entry (its server
    /// misreads it too); the broker reads that form as well, because 'fA' ends the message.
    /// </summary>
    [Test]
    public void P11KitClientFormWithEmptyNestedCountIsRead()
    {
        foreach (var profile in new[] { WireProfile.V1, WireProfile.V2 })
        {
            using var request = new RpcMessageWriter(profile);
            request.Begin(CallTable.Get(RpcCallId.C_GetAttributeValue), MessageKind.Request);
            request.WriteULong(1);
            request.WriteULong(2);
            request.BeginAttributeBuffer(3);
            var w = request.Writer;
            w.WriteUInt32((uint)CKA_WRAP_TEMPLATE); w.WriteUInt32(0); w.WriteUInt32(0);   // pValue non-NULL, length 0
            w.WriteUInt32((uint)CKA_CLASS); w.WriteUInt32(8);                              // type 0 follows
            w.WriteUInt32((uint)CKA_UNWRAP_TEMPLATE); w.WriteUInt32(0);                    // pValue NULL: no count
            var reader = new RpcMessageReader(profile);
            Assert.That(reader.Parse(request.Writer.Body.ToArray(), MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
            Assert.That(reader.TryReadULong(out _) && reader.TryReadULong(out _), Is.True);
            Assert.That(reader.TryReadAttributeBuffer(64 << 20, out var buffers), Is.True, $"v{profile.Version}");
            Assert.That(reader.Complete, Is.True);
            Assert.That(reader.ReadP11KitClientForm, Is.True);
            Assert.That(buffers.Select(b => (b.Type, b.Length)),
                Is.EqualTo(new[] { ((ulong)CKA_WRAP_TEMPLATE, 0u), ((ulong)CKA_CLASS, 8u), ((ulong)CKA_UNWRAP_TEMPLATE, 0u) }));
        }
    }
}
