using P11Proxy.Wire;

namespace P11Proxy.UnitTests.Wire;

/// <summary>
/// Real traffic between p11-kit-client.so 0.24.1 and p11-kit server 0.24.1 (SoftHSM behind it),
/// recorded by tests/Unit/golden/capture.sh: every body must parse, decode and re-encode to the
/// identical bytes with the version 0 profile.
/// </summary>
[TestFixture]
public class GoldenVectorTests
{
    public static IEnumerable<TestCaseData> Files() =>
        Golden.Files024().Select(file => new TestCaseData(file).SetName($"Golden({file})"));

    [Test]
    public void CaptureIsPresentAndVaried()
    {
        var frames = Golden.All024();
        Assert.That(Golden.Files024().Count(), Is.GreaterThanOrEqualTo(15));
        Assert.That(frames, Has.Count.GreaterThan(500));
        var ids = frames.Select(f => BitConverter.ToUInt32(f.Body.AsSpan(0, 4).ToArray().Reverse().ToArray())).ToHashSet();
        Assert.That(ids.Count, Is.GreaterThanOrEqualTo(25), $"distinct call ids: {string.Join(",", ids.Order())}");
        Assert.That(ids, Does.Contain((uint)RpcCallId.Error), "at least one error reply");
        Assert.That(ids, Does.Contain((uint)RpcCallId.C_GetAttributeValue));
        Assert.That(ids, Does.Contain((uint)RpcCallId.C_GenerateKeyPair));
    }

    [TestCaseSource(nameof(Files))]
    public void FramesReEncodeIdentically(string file)
    {
        Assert.That(Golden.VersionByte(Golden.Directory024, file, "client"), Is.EqualTo(0));
        Assert.That(Golden.VersionByte(Golden.Directory024, file, "server"), Is.EqualTo(0));
        var profile = WireProfile.For(0);
        var frames = Golden.Load(Golden.Directory024, file);
        Assert.That(frames, Is.Not.Empty);
        var reader = new RpcMessageReader(profile);
        using var writer = new RpcMessageWriter(profile);
        foreach (var frame in frames)
        {
            var status = reader.Parse(frame.Body, frame.Kind);
            Assert.That(status, Is.EqualTo(ParseStatus.Ok), $"{frame}: parse");
            Assert.That(WireValues.TryDecode(reader, frame.Kind, out var values), Is.True, $"{frame}: decode");
            WireValues.Encode(writer, reader.Call!, frame.Kind, values);
            Assert.That(writer.Complete, Is.True, $"{frame}: encode");
            Assert.That(W.ToHex(writer.Writer.Body), Is.EqualTo(W.ToHex(frame.Body)),
                $"{frame}: {WireValues.Describe(reader.Call!, frame.Kind, values)}");
            Assert.That(WireValues.Describe(reader.Call!, frame.Kind, values), Does.StartWith(reader.Call!.Name));
        }
    }

    [TestCaseSource(nameof(Files))]
    public void RequestsAndResponsesAlternateWithMatchingCalls(string file)
    {
        // p11-kit's client is synchronous: every request is followed by its reply (same call or ERROR).
        var frames = Golden.Load(Golden.Directory024, file);
        for (int i = 0; i + 1 < frames.Count; i += 2)
        {
            Assert.That(frames[i].Kind, Is.EqualTo(MessageKind.Request), frames[i].ToString());
            Assert.That(frames[i + 1].Kind, Is.EqualTo(MessageKind.Response), frames[i + 1].ToString());
            uint request = ReadId(frames[i].Body), response = ReadId(frames[i + 1].Body);
            Assert.That(response == request || response == 0, Is.True, $"{frames[i + 1]}: reply {response} to {request}");
        }
    }

    [Test]
    public void LoginPinIsRedactedInDescriptions()
    {
        var login = Golden.All024().First(f => f.Kind == MessageKind.Request && ReadId(f.Body) == (uint)RpcCallId.C_Login);
        var reader = new RpcMessageReader(WireProfile.V0);
        Assert.That(reader.Parse(login.Body, MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Request, out var values), Is.True);
        var text = WireValues.Describe(reader.Call!, MessageKind.Request, values);
        Assert.That(text, Does.Contain("<redacted 4 bytes>"));
        Assert.That(text, Does.Not.Contain("1234").And.Not.Contain("31323334"));
    }

    private static uint ReadId(byte[] body) => (uint)(body[0] << 24 | body[1] << 16 | body[2] << 8 | body[3]);
}
