global using NUnit.Framework;
global using Net.Pkcs11Interop.HighLevelAPI.MechanismParams;
global using Net.Pkcs11Interop.HighLevelAPI.Factories;
