using P11Proxy.Conformance;

namespace P11Proxy.MessageParameters;

/// <summary>
/// p11proxy-broker --init-reserved: NSS softoken takes its database in C_Initialize's pReserved, so
/// it can be served only with it; without it the broker says what is missing.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class InitReservedTests
{
    [Test]
    public void SoftokenNeedsItsDatabaseString()
    {
        using var db = new SoftokenDb("noreserved");
        var (rc, output) = Proc.Run(Paths.Broker(), ["stdio", "--module", SoftokenDb.Module], new());
        Assert.That(rc, Is.EqualTo(1), $"exit status; output: {output}");
        Assert.That(output, Does.Contain("C_Initialize failed (CKR_ARGUMENTS_BAD)"), "the module's refusal");
        Assert.That(output, Does.Contain("--init-reserved"), "what to do about it");
    }

    [Test]
    public void TheStringReachesTheModule()
    {
        using var db = new SoftokenDb("reserved", tokenLabel: "reserved-db");
        string dir = Directory.CreateTempSubdirectory("p11reserved-").FullName;
        string socket = Path.Combine(dir, "broker.sock");
        try
        {
            using var broker = new Server("p11proxy-broker serve", Paths.Broker(),
                ["serve", "--module", SoftokenDb.Module, "--init-reserved", db.InitString, "--socket", socket], "/nonexistent", socket);
            NativeEnv.Set("P11_KIT_SERVER_ADDRESS", "unix:path=" + socket);
            using var module = Module3.Load(Paths.Module());
            Assert.That(module.Initialize(null), Is.EqualTo(Module3.CKR_OK), "C_Initialize through the broker");
            // The database token carries the label the string gave it: softoken opened that database.
            ulong slot = module.SlotOf("reserved-db");
            Assert.That(module.OpenSession(slot, out ulong session), Is.EqualTo(Module3.CKR_OK), "C_OpenSession on the database token");
            Assert.That(module.Finalize(), Is.EqualTo(Module3.CKR_OK));
            Assert.That(broker.Log, Does.Not.Contain(db.Dir), "the string is not logged");
        }
        finally
        {
            NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
            Directory.Delete(dir, true);
        }
    }
}
