using P11Proxy.Wire;

namespace P11Proxy.UnitTests.Wire;

/// <summary>The per-call facts in the rows agree with the rows' signatures and with each other.</summary>
public sealed class CallFactsTests
{
    [Test]
    public void ShapedRowsHaveTheirShapesSignatures()
    {
        foreach (var call in CallTable.All.Where(c => c.Shape != CallShapes.Own))
            Assert.That((call.RequestSignature, call.ResponseSignature), Is.EqualTo((call.Shape.Request, call.Shape.Response)), call.Name);
        // Every shape but Own is used, and C_Sign's path is the one docs/call-path.md follows.
        Assert.That(CallShapes.All.Where(s => s != CallShapes.Own).All(s => CallTable.All.Any(c => c.Shape == s)), Is.True);
        Assert.That(CallTable.Get(RpcCallId.C_Sign).Shape, Is.SameAs(CallShapes.DataToData));
    }

    [Test]
    public void SecretPartsAreByteArraysOfTheRequest()
    {
        var secret = CallTable.All.Where(c => c.HasSecret).Select(c => c.Name);
        Assert.That(secret, Is.EquivalentTo(new[] { "C_InitToken", "C_InitPIN", "C_SetPIN", "C_Login", "C_LoginUser", "C_InitToken2" }));
        foreach (var call in CallTable.All)
            foreach (int part in call.SecretRequestParts)
                Assert.That(call.Request[part], Is.EqualTo(WireType.ByteArray), $"{call.Name} part {part}");
    }

    [Test]
    public void EverySpaceStringHasItsCWidthAndNothingElseHasOne()
    {
        foreach (var call in CallTable.All)
            foreach (var kind in new[] { MessageKind.Request, MessageKind.Response })
            {
                var parts = call.PartsFor(kind);
                for (int i = 0; i < parts.Length; i++)
                    Assert.That(call.WidthOf(kind, i) > 0, Is.EqualTo(parts[i] == WireType.SpaceString), $"{call.Name} {kind} part {i}");
            }
        Assert.That(Enumerable.Range(0, 18).Select(i => CallTable.Get(RpcCallId.C_GetTokenInfo).WidthOf(MessageKind.Response, i)).Where(w => w > 0),
            Is.EqualTo(new[] { 32, 32, 16, 16, 16 }), "CK_TOKEN_INFO: label, manufacturerID, model, serialNumber, utcTime");
    }

    [Test]
    public void OnlyTheSlotEventWaitBlocksAndOnlyCallsWithoutSessionsReconnect()
    {
        Assert.That(CallTable.All.Where(c => c.Blocking).Select(c => c.Id), Is.EqualTo(new[] { RpcCallId.C_WaitForSlotEvent }));
        Assert.That(CallTable.All.Where(c => c.NoTimeout).Select(c => c.Id), Is.EqualTo(new[] { RpcCallId.C_WaitForSlotEvent }));
        Assert.That(CallTable.All.Where(c => c.Blocking && c.Quick), Is.Empty);
        foreach (var call in CallTable.All.Where(c => c.MayReconnect))
            Assert.That(call.Quick, Is.True, $"{call.Name}: a reconnecting call is one of the quick general ones");
        // Version-1 calls of PKCS#11 3.0 need a 3.0 backend; C_InitToken2 and C_DeriveKey2 are 2.x functions.
        Assert.That(CallTable.All.Where(c => c.MinProtocolVersion >= 1 && !c.Needs30Backend).Select(c => c.Id),
            Is.EquivalentTo(new[] { RpcCallId.C_InitToken2, RpcCallId.C_DeriveKey2 }));
    }
}
