using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace P11Proxy.UnitTests.Pkcs11;

/// <summary>
/// The function lists, the module's export stubs and its table of entry points are generated from
/// pkcs11f.h and src/ProxyModule/Exports.bindings (src/Pkcs11/generate-abi.py); the committed files
/// must be what the generator makes of them today.
/// </summary>
[TestFixture]
public class AbiGeneratorTests
{
    private static readonly (string Dir, string File)[] Outputs =
    [
        ("Pkcs11", "FunctionLists.g.cs"), ("ProxyModule", "Exports.g.cs"), ("ProxyModule", "FunctionTable.g.cs"),
    ];

    [Test]
    public void Generated_files_are_what_the_generator_produces_now()
    {
        var dir = Directory.CreateTempSubdirectory("p11proxy-abi-");
        try
        {
            var (exit, errors) = RunGenerator(new() { ["P11PROXY_ABI_OUT"] = dir.FullName });
            Assert.That(exit, Is.EqualTo(0), errors);
            foreach (var (sourceDir, file) in Outputs)
                Assert.That(File.ReadAllText(Path.Combine(dir.FullName, file)),
                    Is.EqualTo(File.ReadAllText(Path.Combine(SourceDir(), sourceDir, file))),
                    $"src/{sourceDir}/{file} is stale: run python3 src/Pkcs11/generate-abi.py");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void Generator_names_the_package_when_the_header_is_missing()
    {
        var dir = Directory.CreateTempSubdirectory("p11proxy-abi-");
        try
        {
            var (exit, errors) = RunGenerator(new()
            {
                ["PKCS11F_H"] = Path.Combine(dir.FullName, "no-such-pkcs11f.h"),
                ["P11PROXY_ABI_OUT"] = dir.FullName,
            });
            Assert.That(exit, Is.Not.EqualTo(0));
            Assert.That(errors, Does.Contain("libnss3-dev"));
            Assert.That(Directory.GetFiles(dir.FullName), Is.Empty);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void Generator_refuses_a_function_without_a_binding()
    {
        var dir = Directory.CreateTempSubdirectory("p11proxy-abi-");
        try
        {
            var bindings = Path.Combine(dir.FullName, "Exports.bindings");
            File.WriteAllLines(bindings, File.ReadAllLines(Path.Combine(SourceDir(), "ProxyModule", "Exports.bindings"))
                .Where(line => !line.StartsWith("C_Sign ", StringComparison.Ordinal)));
            var (exit, errors) = RunGenerator(new() { ["P11PROXY_ABI_BINDINGS"] = bindings, ["P11PROXY_ABI_OUT"] = dir.FullName });
            Assert.That(exit, Is.Not.EqualTo(0));
            Assert.That(errors, Does.Contain("no line for C_Sign"));
            Assert.That(Directory.GetFiles(dir.FullName, "*.g.cs"), Is.Empty);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static (int Exit, string Errors) RunGenerator(Dictionary<string, string> environment)
    {
        var start = new ProcessStartInfo("python3")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(SourceDir(), "Pkcs11", "generate-abi.py"));
        foreach (var (key, value) in environment)
            start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stderr + stdout.Result);
    }

    // The sources, not the build output: tests may build into any --artifacts-path.
    private static string SourceDir([CallerFilePath] string thisFile = "")
    {
        var dir = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(thisFile)!, "../../../src"));
        if (!File.Exists(Path.Combine(dir, "Pkcs11", "generate-abi.py")))
            Assert.Fail($"cannot find src/Pkcs11/generate-abi.py under {dir}");
        return dir;
    }
}
