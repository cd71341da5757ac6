# Module-system semantics that nixos-module.nix and the stubs rely on, evaluated by whichever
# lib is given. nix/tests/conformance.golden.json holds the output of nixpkgs' real lib (written
# by `scripts/test.d/nix --update-golden` with NIXPKGS_LIB set); CI checks that zib's minilib
# gives the same, case by case. Errors are caught with tryEval (both libs `throw`).
{ libPath ? ""
,
}:
let
  lib = if libPath == "" then import ../minilib else import libPath;
  inherit (lib) mkOption types;
  eval = modules: (lib.evalModules { inherit modules; }).config;
  try =
    v:
    let
      r = builtins.tryEval (builtins.deepSeq v v);
    in
    if r.success then { value = r.value; } else { error = true; };
  listOpt = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  strOpt = mkOption {
    type = types.str;
    default = "default";
  };
in
builtins.mapAttrs (_: try) {
  # Definitions merge in the reverse of the modules' collected (breadth-first) order.
  order-imports = eval [
    { options.l = listOpt; }
    {
      imports = [
        {
          imports = [{ l = [ "grandchild" ]; }];
          l = [ "child" ];
        }
        { l = [ "child2" ]; }
      ];
      l = [ "top" ];
    }
    {
      config = lib.mkMerge [
        { l = [ "top2-a" ]; }
        (lib.mkIf true { l = [ "top2-b" ]; })
      ];
    }
  ];
  order-nested = eval [
    { options.a.b.l = listOpt; }
    { a.b.l = [ "1" ]; }
    {
      config = lib.mkMerge [
        { a.b.l = [ "2a" ]; }
        {
          a = lib.mkMerge [
            { b.l = [ "2b" ]; }
            { b = lib.mkIf true { l = [ "2c" ]; }; }
          ];
        }
      ];
    }
    { a.b.l = [ "3" ]; }
  ];
  order-submodule = eval [
    {
      options.s = mkOption {
        type = types.attrsOf (types.submodule { options.x = listOpt; });
        default = { };
      };
    }
    { s.q.x = [ "a" ]; }
    {
      s.q = lib.mkMerge [
        { x = [ "b" ]; }
        { x = [ "c" ]; }
      ];
    }
  ];
  priorities = eval [
    {
      options = {
        a = strOpt;
        b = strOpt;
        c = strOpt;
        d = mkOption { type = types.str; };
        e = listOpt;
      };
    }
    {
      a = lib.mkDefault "mkDefault";
      b = lib.mkDefault "mkDefault";
      c = lib.mkForce "mkForce";
      e = lib.mkDefault [ "low" ];
    }
    {
      b = "plain";
      c = "plain";
      d = lib.mkOptionDefault "mkOptionDefault";
      e = [ "high" ];
    }
  ];
  conditions = eval [
    {
      options.l = listOpt;
      options.m = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
      options.n = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    }
    {
      l = lib.mkIf false [ "no" ];
      m.kept = "yes";
      m.dropped = lib.mkIf false "no";
      n = lib.mkIf false "no";
    }
    { config = lib.mkIf false { l = [ "no" ]; }; }
  ];
  freeform = eval [
    {
      options.s = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf (types.either types.str (types.attrsOf types.str));
          options.typed = strOpt;
          options.t = mkOption {
            default = { };
            type = types.submodule { options.inner = strOpt; };
          };
        };
      };
    }
    {
      s = {
        extra = "free";
        nested.k = "v";
        t.inner = "set";
      };
    }
  ];
  option-info =
    let
      e = lib.evalModules {
        modules = [
          {
            options.a = strOpt;
            options.b = strOpt;
            options.c = mkOption {
              type = types.int;
              apply = x: x * 2;
            };
          }
          {
            b = "x";
            c = 21;
          }
        ];
      };
    in
    {
      a = {
        inherit (e.options.a) highestPrio isDefined value;
      };
      b = {
        inherit (e.options.b) highestPrio isDefined value;
      };
      c = e.config.c;
    };
  submodule-name = eval [
    {
      options.s = mkOption {
        type = types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options.n = mkOption {
                type = types.str;
                default = name;
              };
            }
          )
        );
        default = { };
      };
    }
    {
      s.alpha = { };
      s.beta.n = "set";
    }
  ];
  types-accept = eval [
    {
      options = {
        e = mkOption { type = types.either types.int types.str; };
        o = mkOption {
          type = types.oneOf [
            types.bool
            types.int
            (types.listOf types.str)
          ];
        };
        b = mkOption { type = types.ints.between 1 10; };
        en = mkOption {
          type = types.enum [
            "A"
            "B"
          ];
        };
        p = mkOption { type = types.path; };
      };
    }
    {
      e = "s";
      o = [ "x" ];
      b = 10;
      en = "B";
      p = "/abs";
    }
  ];
  # The types the stand-ins of the NixOS options use (nix/tests/stubs.nix).
  types-stubs = eval [
    {
      options = {
        lines = mkOption {
          type = types.lines;
          default = "";
        };
        single = mkOption { type = types.singleLineStr; };
        fs = mkOption {
          type = types.coercedTo (types.listOf types.str) (l: lib.genAttrs l (_: true)) (types.attrsOf types.bool);
          default = { };
        };
        fn = mkOption { type = types.either types.str (types.functionTo types.str); };
        checked = mkOption { type = types.addCheck (types.attrsOf types.str) (a: a ? X); };
      };
    }
    {
      lines = "one";
      single = "single line\n";
      fs = [ "zfs" ];
      fn = "script";
      checked.X = "x";
    }
    {
      lines = "two";
      fs.btrfs = false;
    }
  ];
  types-functionTo =
    (eval [
      { options.fn = mkOption { type = types.functionTo types.str; }; }
      { fn = { nodes }: "nodes: ${nodes}"; }
    ]).fn
      { nodes = "a b"; };
  error-singleLineStr = eval [
    { options.a = mkOption { type = types.singleLineStr; }; }
    { a = "two\nlines"; }
  ];
  error-addCheck = eval [
    { options.a = mkOption { type = types.addCheck (types.attrsOf types.str) (a: a ? X); }; }
    { a.Y = "y"; }
  ];
  error-coercedTo = eval [
    {
      options.a = mkOption {
        type = types.coercedTo (types.listOf types.str) (l: lib.genAttrs l (_: true)) (types.attrsOf types.bool);
      };
    }
    { a = "zfs"; }
  ];
  # Errors, as tryEval sees them.
  error-undeclared = eval [
    { options.a = strOpt; }
    { b = "typo"; }
  ];
  error-undeclared-under-false-mkIf = eval [
    { options.a = strOpt; }
    { config = lib.mkIf false { b = "typo"; }; }
  ];
  error-undeclared-in-submodule = eval [
    {
      options.s = mkOption {
        type = types.attrsOf (types.submodule { options.x = strOpt; });
        default = { };
      };
    }
    { s.q.y = "typo"; }
  ];
  error-type = eval [
    { options.a = strOpt; }
    { a = 1; }
  ];
  error-range = eval [
    { options.a = mkOption { type = types.ints.between 1 10; }; }
    { a = 11; }
  ];
  error-enum = eval [
    {
      options.a = mkOption {
        type = types.enum [
          "A"
          "B"
        ];
      };
    }
    { a = "C"; }
  ];
  error-conflict = eval [
    { options.a = strOpt; }
    { a = "one"; }
    { a = "two"; }
  ];
  error-undefined = eval [
    { options.a = mkOption { type = types.str; }; }
  ];
  error-null-mix = eval [
    { options.a = mkOption { type = types.nullOr types.str; }; }
    { a = null; }
    { a = "x"; }
  ];
  error-non-bool-mkIf = eval [
    { options.a = strOpt; }
    { a = lib.mkIf "yes" "x"; }
  ];
}
