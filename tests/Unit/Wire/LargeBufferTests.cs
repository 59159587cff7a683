using System.Runtime.InteropServices;
using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.UnitTests.Wire;

/// <summary>Large receive buffers: reused from a shared pool, given back wiped, never past a cap.</summary>
[TestFixture]
public class LargeBufferTests
{
    [Test]
    public void PoolGivesTheSmallestBufferThatFitsAndKeepsNoMoreThanItsCap()
    {
        var pool = new SpareBufferPool(5 << 20);
        byte[] two = new byte[2 << 20], three = new byte[3 << 20], one = new byte[1 << 20];
        pool.Keep(three);
        pool.Keep(two);
        pool.Keep(one); // 2 + 3 + 1 MiB exceed the 5 MiB cap: not kept
        Assert.That(pool.Take(1500 << 10), Is.SameAs(two));
        Assert.That(pool.Take(2500 << 10), Is.SameAs(three));
        Assert.That(pool.Take(1), Is.Null, "the buffer over the cap was left to the GC");
        pool.Keep(new byte[RpcChannel.RetainedLimit + 1]);
        Assert.That(pool.Take(1), Is.Null, "buffers above the retained limit are never kept");
    }

    [Test]
    public void LargeFrameLandsInAPooledBufferWhichComesBackWiped()
    {
        string path = Path.Combine(Path.GetTempPath(), $"p11proxy-large-{Environment.ProcessId}-{Guid.NewGuid():N}.sock");
        var pool = new SpareBufferPool(8 << 20);
        var spare = new byte[3 << 20];
        pool.Keep(spare);
        using var listener = UnixListener.Listen(path);
        try
        {
            using var client = RpcChannel.ConnectUnix(path);
            int fd = listener.Accept();
            var server = new RpcChannel(fd, fd, isSocket: true) { LargeBuffers = pool };

            const int size = 2 << 20; // more than the socket holds: sent while the server reads
            var sender = Task.Run(() =>
            {
                using var writer = new WireWriter();
                writer.WriteBytes(Enumerable.Repeat((byte)0x5a, size).ToArray());
                client.SendFrame(0x42, writer);
            });
            Assert.That(server.TryReceiveFrame(out uint code, out var body), Is.True);
            sender.Wait();
            Assert.That(code, Is.EqualTo(0x42u));
            Assert.That(body.Length, Is.EqualTo(size));
            Assert.That(body.Span.IndexOfAnyExcept((byte)0x5a), Is.EqualTo(-1));
            Assert.That(MemoryMarshal.TryGetArray(body, out var segment) && ReferenceEquals(segment.Array, spare), Is.True,
                "the frame was received into the pooled buffer, not a new one");
            Assert.That(pool.Take(1), Is.Null);

            server.Dispose();
            var back = pool.Take(1);
            Assert.That(back, Is.SameAs(spare), "the channel gave the buffer back");
            Assert.That(back!.AsSpan().IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "and wiped it first");
        }
        finally
        {
            File.Delete(path);
        }
    }
}
