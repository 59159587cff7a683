using System.Buffers.Binary;

namespace P11Proxy.Wire.Transport;

/// <summary>vsock:cid=N;port=M — a broker on the hypervisor host or in another VM, where the kernel offers AF_VSOCK.</summary>
public static class VSock
{
    /// <summary>VMADDR_CID_HOST: the default peer when the address names no cid.</summary>
    public const uint HostCid = 2;

    public static RpcChannel Connect(uint cid, uint port, FrameLimits? limits = null)
    {
        if (cid == uint.MaxValue) cid = HostCid;
        int fd = Libc.socket(Libc.AF_VSOCK, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0)
            throw new TransportException($"this kernel offers no vsock sockets ({Libc.Describe(Libc.LastError)}); use a unix: or | address");
        // struct sockaddr_vm: family, reserved, port, cid, zero padding.
        Span<byte> address = stackalloc byte[16];
        address.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(address, Libc.AF_VSOCK);
        BinaryPrimitives.WriteUInt32LittleEndian(address[4..], port);
        BinaryPrimitives.WriteUInt32LittleEndian(address[8..], cid);
        while (Libc.connect(fd, address, address.Length) != 0)
        {
            int errno = Libc.LastError;
            if (errno == Libc.EINTR) continue;
            Libc.close(fd);
            throw new TransportException($"cannot connect to the broker at vsock cid {cid} port {port}: {Libc.Describe(errno)}");
        }
        return new RpcChannel(fd, fd, isSocket: true, limits);
    }
}
