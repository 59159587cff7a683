using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.UnitTests.Wire;

/// <summary>The listener/worker control messages: round trips, and refusal of anything else.</summary>
[TestFixture]
public class HandOffMessageTests
{
    [Test]
    public void ClientHandOffRoundTrips()
    {
        var client = new ClientHandOff(Serial: 0x0102_0304_0506_0708, Uid: 1000, Gid: 33, Pid: 4242, Version: 2);
        Span<byte> buffer = stackalloc byte[HandOffMessage.MaxLength];
        int length = HandOffMessage.Encode(client, buffer);
        Assert.That(length, Is.EqualTo(HandOffMessage.ClientLength));
        Assert.That(HandOffMessage.TryDecode(buffer[..length], out ClientHandOff decoded), Is.True);
        Assert.That(decoded, Is.EqualTo(client));
    }

    [Test]
    public void WorkerReadyRoundTrips()
    {
        Span<byte> buffer = stackalloc byte[HandOffMessage.MaxLength];
        int length = HandOffMessage.Encode(new WorkerReady(12_345), buffer);
        Assert.That(HandOffMessage.TryDecode(buffer[..length], out WorkerReady ready), Is.True);
        Assert.That(ready.StartMicroseconds, Is.EqualTo(12_345u));
    }

    [Test]
    public void EveryTruncationExtensionAndByteFlipOfTheHeaderIsRefused()
    {
        var buffer = new byte[HandOffMessage.MaxLength + 1];
        int length = HandOffMessage.Encode(new ClientHandOff(7, 0, 0, 1, 0), buffer);
        for (int cut = 0; cut < length; cut++)
            Assert.That(HandOffMessage.TryDecode(buffer.AsSpan(0, cut), out ClientHandOff _), Is.False, $"cut at {cut}");
        Assert.That(HandOffMessage.TryDecode(buffer.AsSpan(0, length + 1), out ClientHandOff _), Is.False, "one byte too many");
        for (int i = 0; i < 5; i++) // magic and kind
        {
            buffer[i] ^= 0x01;
            Assert.That(HandOffMessage.TryDecode(buffer.AsSpan(0, length), out ClientHandOff _), Is.False, $"byte {i} flipped");
            buffer[i] ^= 0x01;
        }
        // A ready message is not a hand-off and the other way round, though both start alike.
        Assert.That(HandOffMessage.TryDecode(buffer.AsSpan(0, length), out WorkerReady _), Is.False);
    }

    [Test]
    public void AProtocolVersionNoPeerCanHaveNegotiatedIsRefused()
    {
        Span<byte> buffer = stackalloc byte[HandOffMessage.MaxLength];
        int length = HandOffMessage.Encode(new ClientHandOff(1, 0, 0, 1, WireProfile.MaxVersion), buffer);
        Assert.That(HandOffMessage.TryDecode(buffer[..length], out ClientHandOff _), Is.True);
        buffer[length - 1] = (byte)(WireProfile.MaxVersion + 1);
        Assert.That(HandOffMessage.TryDecode(buffer[..length], out ClientHandOff _), Is.False);
    }
}

/// <summary>The socket's mode and group, and the created directories', from the allow lists.</summary>
[TestFixture]
public class SocketAccessTests
{
    private static string Describe(SocketAccess a) =>
        $"{SocketAccess.Octal(a.SocketMode)} {(a.Group is { } g ? g.ToString() : "-")} {SocketAccess.Octal(a.DirectoryMode)}";

    [Test]
    public void WithoutAllowListsOnlyTheOwnerGetsIn()
    {
        Assert.That(Describe(SocketAccess.For(1000, [], [])), Is.EqualTo("0600 - 0700"));
        // The broker's own uid in the list changes nothing.
        Assert.That(Describe(SocketAccess.For(1000, [1000], [])), Is.EqualTo("0600 - 0700"));
    }

    [Test]
    public void OneAllowedGroupOwnsTheSocket()
    {
        Assert.That(Describe(SocketAccess.For(1000, [], [33])), Is.EqualTo("0660 33 0710"));
    }

    [Test]
    public void AnAllowedUidOrSeveralGroupsOpenTheSocketToAllWithSearchOnlyDirectories()
    {
        Assert.That(Describe(SocketAccess.For(1000, [33], [])), Is.EqualTo("0666 - 0711"));
        Assert.That(Describe(SocketAccess.For(1000, [], [33, 44])), Is.EqualTo("0666 - 0711"));
        Assert.That(Describe(SocketAccess.For(1000, [33], [44])), Is.EqualTo("0666 - 0711"));
    }

    [Test]
    public void ExplicitModeAndGroupWinAndDirectoriesFollowTheMode()
    {
        Assert.That(Describe(SocketAccess.For(1000, [33], [], socketMode: 0b110_110_000, socketGroup: 50)), Is.EqualTo("0660 50 0710"));
        Assert.That(Describe(SocketAccess.For(1000, [], [], socketGroup: 50)), Is.EqualTo("0660 50 0710"));
        Assert.That(Describe(SocketAccess.For(1000, [], [], socketMode: 0b110_000_000)), Is.EqualTo("0600 - 0700"));
        Assert.That(Describe(SocketAccess.For(1000, [], [33, 44], socketGroup: 33)), Is.EqualTo("0666 33 0711"));
    }

    [Test]
    public void ModesParseAsOctalAndNothingElse()
    {
        Assert.That(SocketAccess.TryParseMode("0660", out uint mode) && mode == 0b110_110_000, Is.True);
        Assert.That(SocketAccess.TryParseMode("666", out mode) && mode == 0b110_110_110, Is.True);
        foreach (var bad in new[] { "", "0800", "66a", "07777", "-1", "0x1b6" })
            Assert.That(SocketAccess.TryParseMode(bad, out _), Is.False, bad);
    }
}

/// <summary>What is at the socket path, and which socket the broker may remove.</summary>
[TestFixture]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class UnixSocketPlaceTests
{
    private string _dir = "";
    private static readonly SocketAccess Private = SocketAccess.For(0, [], []);

    [SetUp]
    public void MakeDirectory() => _dir = Directory.CreateTempSubdirectory("p11proxy-place-").FullName;

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void MissingDirectoriesAreCreatedWithTheModeWhateverTheUmask()
    {
        string path = Path.Combine(_dir, "a", "b", "pkcs11");
        uint saved = umask(0);
        try
        {
            var prepared = UnixSocketPlace.Prepare(path, Private);
            Assert.That(prepared.CreatedDirectories, Is.EqualTo(new[] { Path.Combine(_dir, "a"), Path.Combine(_dir, "a", "b") }));
        }
        finally
        {
            umask(saved);
        }
        Assert.That(File.GetUnixFileMode(Path.Combine(_dir, "a")), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute));
        Assert.That(File.GetUnixFileMode(Path.Combine(_dir, "a", "b")), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute));
    }

    [Test]
    public void ADirectoryAFileOrALinkAtThePathIsAnErrorAndLeftAlone()
    {
        string directory = Path.Combine(_dir, "dir");
        Directory.CreateDirectory(directory);
        Assert.That(() => UnixSocketPlace.Prepare(directory, Private),
            Throws.TypeOf<SocketPlaceException>().With.Message.Contains("is a directory, not a socket"));
        string file = Path.Combine(_dir, "file");
        File.WriteAllText(file, "keep");
        Assert.That(() => UnixSocketPlace.Prepare(file, Private),
            Throws.TypeOf<SocketPlaceException>().With.Message.Contains("is a regular file, not a socket"));
        string link = Path.Combine(_dir, "link");
        File.CreateSymbolicLink(link, file);
        Assert.That(() => UnixSocketPlace.Prepare(link, Private),
            Throws.TypeOf<SocketPlaceException>().With.Message.Contains("is a symbolic link, not a socket"));
        Assert.That(Directory.Exists(directory) && File.ReadAllText(file) == "keep" && File.ResolveLinkTarget(link, false) is not null, Is.True);
    }

    [Test]
    public void ALiveSocketIsAnErrorAndAStaleOneIsReplaced()
    {
        string path = Path.Combine(_dir, "sock");
        using (var live = UnixListener.Listen(path))
        {
            Assert.That(() => UnixSocketPlace.Prepare(path, Private),
                Throws.TypeOf<SocketPlaceException>().With.Message.Contains("another server is already listening"));
        }
        // The listener is closed but its file remains: nothing answers on it any more.
        Assert.That(File.Exists(path), Is.True);
        var prepared = UnixSocketPlace.Prepare(path, Private);
        Assert.That(prepared.ReplacedStaleSocket, Is.True);
        Assert.That(File.Exists(path), Is.False);
    }

    [Test]
    public void OnlyTheSocketThatWasBoundIsRemoved()
    {
        string path = Path.Combine(_dir, "sock");
        using var first = UnixListener.Listen(path);
        var own = UnixSocketPlace.Secure(path, Private);
        Assert.That(File.GetUnixFileMode(path), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
        File.Delete(path);
        using var second = UnixListener.Listen(path);
        Assert.That(UnixSocketPlace.RemoveIfOwn(path, own), Is.False, "another broker's socket was removed");
        Assert.That(File.Exists(path), Is.True);
        var theirs = UnixSocketPlace.Secure(path, Private);
        Assert.That(UnixSocketPlace.RemoveIfOwn(path, theirs), Is.True);
        Assert.That(File.Exists(path), Is.False);
    }

    [Test]
    public void ADirectoryAnAdmittedUidCannotSearchIsReported()
    {
        string inner = Path.Combine(_dir, "inner");
        Directory.CreateDirectory(inner);
        File.SetUnixFileMode(_dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.SetUnixFileMode(inner, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        var problems = UnixSocketPlace.Obstacles(Path.Combine(inner, "sock"), ownUid: 0, allowedUids: [33], allowedGids: []);
        Assert.That(problems, Has.Some.StartsWith($"uid 33 may not be able to reach the socket: {_dir} is mode 0700"));
        Assert.That(problems, Has.None.Contains($"{inner} is mode"));
        Assert.That(UnixSocketPlace.Obstacles(Path.Combine(inner, "sock"), 0, [], []), Is.Empty);
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint umask(uint mask);
}

/// <summary>Whom the module accepts at the other end of a unix socket.</summary>
[TestFixture]
public class BrokerPeerTests
{
    [Test]
    public void OwnUidRootAndTheConfiguredUidAreAccepted()
    {
        Assert.That(BrokerPeer.Refusal(new PeerCredentials(10, 1000, 1000), 1000, null, "/p", "conf"), Is.Null);
        Assert.That(BrokerPeer.Refusal(new PeerCredentials(10, 0, 0), 1000, null, "/p", "conf"), Is.Null);
        Assert.That(BrokerPeer.Refusal(new PeerCredentials(10, 998, 998), 1000, 998, "/p", "conf"), Is.Null);
    }

    [Test]
    public void AnyOtherUidIsRefusedByNameWithTheWayOut()
    {
        string? refusal = BrokerPeer.Refusal(new PeerCredentials(4321, 1001, 1001), 1000, null, "/tmp/pkcs11", "~/.config/p11proxy/p11proxy.conf");
        Assert.That(refusal, Does.StartWith("the broker at /tmp/pkcs11 runs as uid 1001 (pid 4321), not as you (uid 1000), root"));
        Assert.That(refusal, Does.EndWith("set 'broker-uid = 1001' in ~/.config/p11proxy/p11proxy.conf"));
        Assert.That(BrokerPeer.Refusal(new PeerCredentials(1, 1001, 1001), 1000, 998, "/p", "conf"),
            Does.Contain("or the configured broker-uid 998"));
        Assert.That(BrokerPeer.Refusal(null, 1000, null, "/p", "conf"), Does.Contain("cannot tell who runs the broker"));
    }

    [Test]
    public void TheCheckReadsTheRealPeerOfAConnectedSocket()
    {
        string dir = Directory.CreateTempSubdirectory("p11proxy-peer-").FullName;
        try
        {
            string path = Path.Combine(dir, "sock");
            using var listener = UnixListener.Listen(path);
            using var client = RpcChannel.ConnectUnix(path);
            uint me = getuid();
            Assert.That(() => BrokerPeer.Check(client.ReadFd, me, null, path, "conf"), Throws.Nothing);
            uint someoneElse = me == 0 ? 1 : me + 1;
            if (me != 0) // root is always accepted, so the refusal needs a non-root test run
                Assert.That(() => BrokerPeer.Check(client.ReadFd, someoneElse, null, path, "conf"), Throws.TypeOf<TransportException>());
            else
                Assert.That(BrokerPeer.Refusal(UnixListener.PeerOf(client.ReadFd), someoneElse, null, path, "conf"), Is.Null,
                    "a broker running as root is accepted by every user");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint getuid();
}
