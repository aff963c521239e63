//! Which adapter to run on, as plain data: [`AdapterChoice`] and [`GpuApi`].
//! Present in every build: a `Device::Gpu` names one even where the `gpu`
//! feature is off.

use std::fmt;
use std::str::FromStr;

/// A wgpu backend API, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuApi {
    /// Vulkan (Linux, Windows, Android; lavapipe in CI).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / GLES (Mesa's llvmpipe, ANGLE).
    Gl,
}

impl GpuApi {
    fn name(self) -> &'static str {
        match self {
            GpuApi::Vulkan => "vulkan",
            GpuApi::Metal => "metal",
            GpuApi::Dx12 => "dx12",
            GpuApi::Gl => "gl",
        }
    }
}

/// How to pick a GPU adapter. Parsed from the strings `--device` takes:
/// `gpu` or `auto`, `vulkan`, `metal`, `dx12`, `gl`, `software`,
/// `name:<substring>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AdapterChoice {
    /// The best hardware adapter (discrete, then integrated, then virtual).
    /// Never a software adapter: on a machine with only lavapipe, llvmpipe or
    /// WARP, `Auto` finds nothing and a session runs on the CPU backend,
    /// which is faster there.
    #[default]
    Auto,
    /// The best adapter of one backend API (hardware first, then software).
    Backend(GpuApi),
    /// A software adapter (lavapipe/llvmpipe, WARP, SwiftShader): for CI and
    /// machines without a GPU.
    Software,
    /// The first adapter whose name contains this substring (case-insensitive).
    Name(String),
}

impl FromStr for AdapterChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(name) = t.strip_prefix("name:") {
            if name.trim().is_empty() {
                return Err("`name:` needs a substring of an adapter name, e.g. `name:llvmpipe`".into());
            }
            return Ok(AdapterChoice::Name(name.trim().to_string()));
        }
        match t.to_ascii_lowercase().as_str() {
            "gpu" | "auto" => Ok(AdapterChoice::Auto),
            "vulkan" => Ok(AdapterChoice::Backend(GpuApi::Vulkan)),
            "metal" => Ok(AdapterChoice::Backend(GpuApi::Metal)),
            "dx12" => Ok(AdapterChoice::Backend(GpuApi::Dx12)),
            "gl" | "gles" | "opengl" => Ok(AdapterChoice::Backend(GpuApi::Gl)),
            "software" => Ok(AdapterChoice::Software),
            other => Err(format!(
                "unknown GPU choice `{other}`; choose gpu, vulkan, metal, dx12, gl, software or name:<substring>"
            )),
        }
    }
}

impl fmt::Display for AdapterChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterChoice::Auto => f.write_str("gpu"),
            AdapterChoice::Backend(api) => f.write_str(api.name()),
            AdapterChoice::Software => f.write_str("software"),
            AdapterChoice::Name(n) => write!(f, "name:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choices() {
        assert_eq!("gpu".parse::<AdapterChoice>().unwrap(), AdapterChoice::Auto);
        assert_eq!("auto".parse::<AdapterChoice>().unwrap(), AdapterChoice::Auto);
        assert_eq!(
            "Vulkan".parse::<AdapterChoice>().unwrap(),
            AdapterChoice::Backend(GpuApi::Vulkan)
        );
        assert_eq!(
            "gl".parse::<AdapterChoice>().unwrap(),
            AdapterChoice::Backend(GpuApi::Gl)
        );
        assert_eq!("software".parse::<AdapterChoice>().unwrap(), AdapterChoice::Software);
        assert_eq!(
            "name:LLVMpipe".parse::<AdapterChoice>().unwrap(),
            AdapterChoice::Name("LLVMpipe".into())
        );
        assert!("name:".parse::<AdapterChoice>().is_err());
        assert!("tpu".parse::<AdapterChoice>().is_err());
        for s in ["gpu", "vulkan", "metal", "dx12", "gl", "software", "name:foo"] {
            let c: AdapterChoice = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
    }
}
