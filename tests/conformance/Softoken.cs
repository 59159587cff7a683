namespace P11Proxy.Conformance;

/// <summary>
/// NSS softoken, a PKCS#11 3.0 module on every Debian machine (libnss3). It needs its database named
/// in C_Initialize's pReserved; <see cref="InitString"/> is that string for a throw-away database
/// made with certutil (empty password unless one is given).
/// </summary>
internal sealed class SoftokenDb : IDisposable
{
    public const string Module = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

    public string Dir { get; }

    /// <summary>The C_Initialize pReserved string that points softoken at this database.</summary>
    public string InitString { get; }

    public SoftokenDb(string name, string? password = null, string? tokenLabel = null)
    {
        Dir = Directory.CreateTempSubdirectory($"p11softoken-{name}-").FullName;
        string[] args = password is null
            ? ["-N", "--empty-password", "-d", $"sql:{Dir}"]
            : ["-N", "-f", WritePasswordFile(password), "-d", $"sql:{Dir}"];
        var (rc, output) = Proc.Run("certutil", args, new());
        if (rc != 0) Assert.Fail($"certutil -N failed ({rc}): {output}");
        // dbTokenDescription names the database token (32 characters at most, as any token label).
        InitString = $"configdir='sql:{Dir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=" +
                     (tokenLabel is null ? "" : $" dbTokenDescription='{tokenLabel}'");
    }

    private string WritePasswordFile(string password)
    {
        string file = Path.Combine(Dir, "password");
        File.WriteAllText(file, password + "\n");
        return file;
    }

    public void Dispose()
    {
        try { Directory.Delete(Dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Small C helpers of the tests (native/*.c), compiled on first use with clang.</summary>
internal static class NativeHelpers
{
    private static readonly object Gate = new();
    private static readonly Dictionary<string, string> Built = new();

    /// <summary>Builds native/<paramref name="source"/> into a shared library and returns its path.</summary>
    public static string SharedLibrary(string source)
    {
        lock (Gate)
        {
            if (Built.TryGetValue(source, out var built)) return built;
            string input = Path.Combine(AppContext.BaseDirectory, "native", source);
            string output = Path.Combine(Directory.CreateTempSubdirectory("p11native-").FullName, Path.ChangeExtension(source, ".so"));
            var (rc, log) = Proc.Run("clang", ["-shared", "-fPIC", "-O1", "-Wall", "-o", output, input,
                "-I/usr/include/nss", "-I/usr/include/nspr", "-ldl"], new());
            if (rc != 0) Assert.Fail($"clang could not build {source} ({rc}): {log}");
            Built[source] = output;
            return output;
        }
    }
}
