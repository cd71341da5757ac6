# zib's minimal module-system evaluator ("minilib").
#
# CI machines have Nix (Debian's nix-bin) but no nixpkgs, so the offline checks in
# scripts/test.d/nix evaluate nixos-module.nix with this small re-implementation of the parts
# of nixpkgs' lib/modules.nix, lib/options.nix and lib/types.nix that the module, the stand-in
# NixOS options (nix/tests/stubs.nix), nix/package.nix and flake.nix use.
#
# It follows nixpkgs' semantics where they matter for the checks:
#   - modules: attrsets, functions or paths; `imports` closed over with builtins.genericClosure
#     (same order as nixpkgs); `options`/`config` or shorthand config; `freeformType`;
#   - properties: mkIf / mkMerge / mkOverride (mkDefault, mkForce, mkOptionDefault) pushed down
#     through attrsets and discharged at option boundaries, as lib/modules.nix does;
#   - errors: "The option `x' does not exist", "is not of type", "has conflicting definition
#     values", "was accessed but has no value defined", non-Boolean mkIf conditions;
#   - types: bool, int, ints.*, float, str, nonEmptyStr, strMatching, path, package, enum,
#     nullOr, listOf, attrsOf, either, oneOf, submodule(With), unspecified, anything, raw.
# Not implemented: mkOrder (mkBefore/mkAfter), readOnly, _module.args, disabledModules,
# option renames, documentation. Whenever the module changes, run the same harness against
# nixpkgs' real lib (NIXPKGS_LIB=/path/to/nixpkgs/lib scripts/test.d/nix): the JSON of every
# case must be identical (the suite compares them when NIXPKGS_LIB is set).
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    functionArgs
    genericClosure
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    map
    mapAttrs
    tail
    zipAttrsWith
    ;

  lib = rec {
    inherit
      all
      any
      attrNames
      concatLists
      concatMap
      concatStringsSep
      elem
      filter
      foldl'
      head
      isAttrs
      isBool
      isFunction
      isInt
      isList
      isString
      length
      map
      mapAttrs
      tail
      zipAttrsWith
      ;
    attrValues = builtins.attrValues;
    replaceStrings = builtins.replaceStrings;

    # ---- trivial / lists / attrsets / strings ------------------------------------------------
    id = x: x;
    const = x: _: x;
    flip =
      f: a: b:
      f b a;
    min = a: b: if a < b then a else b;
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalString = cond: s: if cond then s else "";
    optionalAttrs = cond: as: if cond then as else { };
    toList = x: if isList x then x else [ x ];
    last = l: elemAt l (length l - 1);
    reverseList =
      l:
      let
        n = length l;
      in
      builtins.genList (i: elemAt l (n - 1 - i)) n;
    imap1 = f: l: builtins.genList (n: f (n + 1) (elemAt l n)) (length l);
    unique = foldl' (acc: e: if elem e acc then acc else acc ++ [ e ]) [ ];
    filterAttrs =
      pred: set:
      listToAttrs (
        concatMap
          (
            name:
            let
              v = set.${name};
            in
            if pred name v then [{ inherit name; value = v; }] else [ ]
          )
          (attrNames set)
      );
    mapAttrsToList = f: set: map (name: f name set.${name}) (attrNames set);
    genAttrs =
      names: f:
      listToAttrs (
        map
          (name: {
            inherit name;
            value = f name;
          })
          names
      );
    setAttrByPath =
      path: value:
      if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
    recursiveUpdate =
      lhs: rhs:
      lhs
      // mapAttrs
        (
          name: v: if isAttrs v && lhs ? ${name} && isAttrs lhs.${name} then recursiveUpdate lhs.${name} v else v
        )
        rhs;
    hasPrefix = pref: str: builtins.substring 0 (builtins.stringLength pref) str == pref;
    hasSuffix =
      suf: str:
      let
        ls = builtins.stringLength str;
        lf = builtins.stringLength suf;
      in
      lf <= ls && builtins.substring (ls - lf) lf str == suf;
    removePrefix =
      pref: str:
      if hasPrefix pref str then
        builtins.substring (builtins.stringLength pref) (builtins.stringLength str) str
      else
        str;
    toLower = builtins.replaceStrings upperChars lowerChars;
    upperChars = stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    lowerChars = stringToCharacters "abcdefghijklmnopqrstuvwxyz";
    stringToCharacters = s: builtins.genList (i: builtins.substring i 1 s) (builtins.stringLength s);
    concatMapStringsSep = sep: f: l: concatStringsSep sep (map f l);
    escapeShellArg =
      arg:
      let
        s = toString arg;
      in
      if builtins.match "[[:alnum:],._+:@%/-]+" s == null then
        "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] s}'"
      else
        s;
    escapeShellArgs = concatMapStringsSep " " escapeShellArg;
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    isStringLike = x: isString x || isPath x || (isAttrs x && (x ? outPath || x ? __toString));
    versionAtLeast = v1: v2: builtins.compareVersions v1 v2 >= 0;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    literalMD = text: {
      _type = "literalMD";
      inherit text;
    };

    # ---- option declarations ------------------------------------------------------------------
    mkOption = attrs: attrs // { _type = "option"; };
    isOption = x: isAttrs x && (x._type or null) == "option";
    mkEnableOption =
      name:
      mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = "Whether to enable ${name}.";
      };
    showOption = loc: concatStringsSep "." loc;
    showDefs =
      defs:
      concatStringsSep "" (map (d: "\n- In `${toString d.file}': ${builtins.toJSON (d.value)}") defs);

    # ---- properties -----------------------------------------------------------------------------
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkOptionDefault = mkOverride 1500;
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    defaultOverridePriority = 100;

    propType = x: if isAttrs x then x._type or "" else "";

    pushDownProperties =
      cfg:
      let
        t = propType cfg;
      in
      if t == "merge" then
        concatMap pushDownProperties cfg.contents
      else if t == "if" then
        map (mapAttrs (_: v: mkIf cfg.condition v)) (pushDownProperties cfg.content)
      else if t == "override" then
        map (mapAttrs (_: v: mkOverride cfg.priority v)) (pushDownProperties cfg.content)
      else
        [ cfg ];

    dischargeProperties =
      def:
      let
        t = propType def;
      in
      if t == "merge" then
        concatMap dischargeProperties def.contents
      else if t == "if" then
        if isBool def.condition then
          (if def.condition then dischargeProperties def.content else [ ])
        else
          throw "‘mkIf’ called with a non-Boolean condition"
      else
        [ def ];

    filterOverrides =
      defs:
      let
        getPrio = def: if propType def.value == "override" then def.value.priority else defaultOverridePriority;
        highestPrio = foldl' (prio: def: min (getPrio def) prio) 9999 defs;
        strip = def: if propType def.value == "override" then def // { value = def.value.content; } else def;
      in
      {
        values = concatMap (def: if getPrio def == highestPrio then [ (strip def) ] else [ ]) defs;
        inherit highestPrio;
      };

    # Merge the definitions (list of { file, value }) of one option of type `type`.
    mergeDefinitions =
      loc: type: defs:
      let
        discharged = concatMap
          (
            d:
            map
              (value: {
                inherit (d) file;
                inherit value;
              })
              (dischargeProperties d.value)
          )
          defs;
        fo = filterOverrides discharged;
        defsFinal = fo.values;
        isDefined = defsFinal != [ ];
        mergedValue =
          if isDefined then
            if all (def: type.check def.value) defsFinal then
              type.merge loc defsFinal
            else
              let
                bad = head (filter (def: !(type.check def.value)) defsFinal);
              in
              throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${showDefs [ bad ]}"
          else
            throw "The option `${showOption loc}' was accessed but has no value defined. Try setting the option.";
      in
      {
        inherit defsFinal isDefined mergedValue;
        inherit (fo) highestPrio;
        optionalValue = if isDefined then { value = mergedValue; } else { };
      };

    evalOptionValue =
      loc: opt: defs:
      let
        defs' =
          (optional (opt ? default) {
            file = "<default of ${showOption loc}>";
            value = mkOptionDefault opt.default;
          })
          ++ defs;
        res = mergeDefinitions loc (opt.type or types.unspecified) defs';
        value = if opt ? apply then opt.apply res.mergedValue else res.mergedValue;
      in
      opt
      // {
        inherit value loc;
        inherit (res) isDefined highestPrio;
        definitions = map (d: d.value) res.defsFinal;
        files = map (d: d.file) res.defsFinal;
      };

    # ---- merge functions ------------------------------------------------------------------------
    mergeEqualOption =
      loc: defs:
      if defs == [ ] then
        abort "This case should never happen."
      else if length defs == 1 then
        (head defs).value
      else
        (foldl'
          (
            first: def:
            if def.value != first.value then
              throw "The option `${showOption loc}' has conflicting definition values:${
              showDefs [
                first
                def
              ]
            }"
            else
              first
          )
          (head defs)
          (tail defs)).value;

    mergeOneOption =
      loc: defs:
      if length defs == 1 then
        (head defs).value
      else
        throw "The option `${showOption loc}' is defined multiple times while it's expected to be unique.";

    mergeDefaultOption =
      loc: defs:
      let
        list = map (d: d.value) defs;
      in
      if length list == 1 then
        head list
      else if all isFunction list then
        x: mergeDefaultOption loc (map (f: { value = f x; }) list)
      else if all isList list then
        concatLists list
      else if all isAttrs list then
        foldl' (a: b: a // b) { } list
      else if all isBool list then
        foldl' (a: b: a || b) false list
      else if all isString list then
        concatStringsSep "" list
      else if all isInt list && all (x: x == head list) list then
        head list
      else
        throw "Cannot merge definitions of `${showOption loc}'. Definition values:${showDefs defs}";

    # ---- types ------------------------------------------------------------------------------------
    mkOptionType =
      { name
      , description ? name
      , check ? (_: true)
      , merge ? mergeDefaultOption
      , ...
      }@args:
      args
      // {
        _type = "option-type";
        inherit
          name
          description
          check
          merge
          ;
      };

    isType = t: x: isAttrs x && (x._type or null) == t;

    types = rec {
      unspecified = mkOptionType { name = "unspecified"; };
      raw = mkOptionType {
        name = "raw";
        description = "raw value";
        merge = mergeOneOption;
      };
      anything = mkOptionType {
        name = "anything";
        description = "anything";
        merge =
          loc: defs:
          let
            vs = map (d: d.value) defs;
          in
          if all isAttrs vs then
            (attrsOf anything).merge loc defs
          else if all isList vs then
            concatLists vs
          else
            mergeEqualOption loc defs;
      };
      bool = mkOptionType {
        name = "bool";
        description = "boolean";
        check = isBool;
        merge = mergeEqualOption;
      };
      int = mkOptionType {
        name = "int";
        description = "signed integer";
        check = isInt;
        merge = mergeEqualOption;
      };
      ints = {
        between =
          lo: hi:
          addCheck int (x: x >= lo && x <= hi)
          // {
            name = "intBetween";
            description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
          };
        unsigned =
          addCheck int (x: x >= 0)
          // {
            name = "unsignedInt";
            description = "unsigned integer, meaning >=0";
          };
        positive =
          addCheck int (x: x > 0)
          // {
            name = "positiveInt";
            description = "positive integer, meaning >0";
          };
      };
      port = ints.between 0 65535;
      float = mkOptionType {
        name = "float";
        description = "floating point number";
        check = isFloat;
        merge = mergeEqualOption;
      };
      str = mkOptionType {
        name = "str";
        description = "string";
        check = isString;
        merge = mergeEqualOption;
      };
      nonEmptyStr =
        addCheck str (x: builtins.match "[[:space:]]*" x == null)
        // {
          name = "nonEmptyStr";
          description = "non-empty string";
        };
      strMatching =
        pattern:
        mkOptionType {
          name = "strMatching ${pattern}";
          description = "string matching the pattern ${pattern}";
          check = x: isString x && builtins.match pattern x != null;
          merge = mergeEqualOption;
        };
      # Strings joined with a separator across definitions (types.lines: "\n").
      separatedString =
        sep:
        mkOptionType {
          name = "separatedString";
          description = "strings concatenated with ${builtins.toJSON sep}";
          check = isString;
          merge = _loc: defs: concatStringsSep sep (map (d: d.value) defs);
        };
      lines = separatedString "\n";
      singleLineStr = mkOptionType {
        name = "singleLineStr";
        description = "(optionally newline-terminated) single-line string";
        check = (strMatching "[^\n\r]*\n?").check;
        merge =
          loc: defs:
          let
            v = mergeEqualOption loc defs;
            n = builtins.stringLength v;
          in
          if n > 0 && builtins.substring (n - 1) 1 v == "\n" then builtins.substring 0 (n - 1) v else v;
      };
      # A value of coercedType is converted with coerceFunc; the result must be a finalType.
      coercedTo =
        coercedType: coerceFunc: finalType:
        mkOptionType {
          name = "coercedTo";
          description = "${finalType.description} or ${coercedType.description} convertible to it";
          check = x: (coercedType.check x && finalType.check (coerceFunc x)) || finalType.check x;
          merge =
            loc: defs:
            finalType.merge loc (
              map (d: d // { value = if coercedType.check d.value then coerceFunc d.value else d.value; }) defs
            );
        };
      # A function whose results (for the same argument) are merged as elemType.
      functionTo =
        elemType:
        mkOptionType {
          name = "functionTo";
          description = "function that evaluates to a(n) ${elemType.description}";
          check = isFunction;
          merge =
            loc: defs: fnArgs:
            (mergeDefinitions (loc ++ [ "<function body>" ]) elemType (
              map (d: d // { value = d.value fnArgs; }) defs
            )).mergedValue;
        };
      addCheck = t: check: t // { check = x: t.check x && check x; };
      path = mkOptionType {
        name = "path";
        description = "absolute path";
        check = x: isStringLike x && builtins.substring 0 1 (toString x) == "/";
        merge = mergeEqualOption;
      };
      package = mkOptionType {
        name = "package";
        description = "package";
        check = x: isDerivation x || (isStringLike x && hasPrefix builtins.storeDir (toString x));
        merge = mergeOneOption;
      };
      enum =
        values:
        mkOptionType {
          name = "enum";
          description = "one of ${concatMapStringsSep ", " builtins.toJSON values}";
          check = x: elem x values;
          merge = mergeEqualOption;
        };
      nullOr =
        elemType:
        mkOptionType {
          name = "nullOr";
          description = "null or ${elemType.description}";
          check = x: x == null || elemType.check x;
          merge =
            loc: defs:
            let
              nrNulls = length (filter (d: d.value == null) defs);
            in
            if nrNulls == length defs then
              null
            else if nrNulls != 0 then
              throw "The option `${showOption loc}' is defined both null and not null, in ${
                concatStringsSep ", " (map (d: toString d.file) defs)
              }."
            else
              elemType.merge loc defs;
        };
      listOf =
        elemType:
        mkOptionType {
          name = "listOf";
          description = "list of ${elemType.description}";
          check = isList;
          merge =
            loc: defs:
            map (x: x.value) (
              filter (x: x ? value) (
                concatLists (
                  imap1
                    (
                      n: def:
                      imap1
                        (
                          m: v:
                          (mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) elemType [
                            {
                              inherit (def) file;
                              value = v;
                            }
                          ]).optionalValue
                        )
                        def.value
                    )
                    defs
                )
              )
            );
        };
      attrsOf =
        elemType:
        mkOptionType {
          name = "attrsOf";
          description = "attribute set of ${elemType.description}";
          check = isAttrs;
          merge =
            loc: defs:
            mapAttrs (_: v: v.value) (
              filterAttrs (_: v: v ? value) (
                zipAttrsWith (name: ds: (mergeDefinitions (loc ++ [ name ]) elemType ds).optionalValue) (
                  map
                    (
                      def:
                      mapAttrs
                        (_: v: {
                          inherit (def) file;
                          value = v;
                        })
                        def.value
                    )
                    defs
                )
              )
            );
        };
      lazyAttrsOf = attrsOf;
      either =
        t1: t2:
        mkOptionType {
          name = "either";
          description = "${t1.description} or ${t2.description}";
          check = x: t1.check x || t2.check x;
          merge =
            loc: defs:
            let
              vs = map (d: d.value) defs;
            in
            if all t1.check vs then
              t1.merge loc defs
            else if all t2.check vs then
              t2.merge loc defs
            else
              mergeOneOption loc defs;
        };
      oneOf =
        ts:
        if ts == [ ] then throw "types.oneOf needs at least one type" else foldl' either (head ts) (tail ts);
      submoduleWith =
        { modules
        , specialArgs ? { }
        , shorthandOnlyDefinesConfig ? false
        , ...
        }:
        mkOptionType {
          name = "submodule";
          description = "submodule";
          check = x: isAttrs x || isFunction x || isPath x;
          merge =
            loc: defs:
            (evalModules {
              inherit specialArgs;
              prefix = loc;
              name = last loc;
              modules =
                modules
                ++ map
                  (
                    d:
                    if isAttrs d.value && shorthandOnlyDefinesConfig then
                      {
                        _file = d.file;
                        config = d.value;
                      }
                    else
                      {
                        _file = d.file;
                        imports = [ d.value ];
                      }
                  )
                  defs;
            }).config;
        };
      submodule =
        modules:
        submoduleWith {
          shorthandOnlyDefinesConfig = true;
          modules = toList modules;
        };
    };

    addCheck = t: check: t // { check = x: t.check x && check x; };

    # ---- the evaluator ----------------------------------------------------------------------------
    evalModules =
      { modules
      , specialArgs ? { }
      , prefix ? [ ]
      , name ? "‹name›"
      , ...
      }:
      let
        # Arguments every module function gets (nixpkgs passes only the ones it names, plus
        # lib/config/options; every NixOS module takes `...`, so this is equivalent).
        moduleArgs = {
          inherit lib config options name;
        }
        // specialArgs;

        applyIfFunction =
          m:
          if isFunction m then
            m (builtins.intersectAttrs (functionArgs m) moduleArgs // { inherit lib config options; })
          else
            m;

        load =
          parentFile: key: m:
          let
            fromFile = isPath m || isString m;
            file = if fromFile then toString m else parentFile;
            m' = applyIfFunction (if fromFile then import m else m);
            file' = m'._file or file;
            shorthand = !(m' ? config || m' ? options);
          in
          {
            key = if fromFile then toString m else m'.key or key;
            file = file';
            imports = m'.imports or [ ];
            options = m'.options or { };
            freeformType = m'.freeformType or null;
            config =
              if shorthand then
                removeAttrs m' [
                  "imports"
                  "_file"
                  "key"
                  "disabledModules"
                  "meta"
                  "freeformType"
                  "_class"
                ]
              else
                m'.config or { };
          };

        collected = genericClosure {
          startSet = imap1 (i: m: load "<unknown-file>" "anon-${toString i}" m) modules;
          operator = mod: imap1 (i: m: load mod.file "${mod.key}:anon-${toString i}" m) mod.imports;
        };

        freeformTypes = filter (t: t != null) (map (m: m.freeformType) collected);
        freeformType = if freeformTypes == [ ] then null else head freeformTypes;

        # Merge the option declarations of all modules into one tree.
        mergeDecls =
          loc: decls:
          let
            opts = filter (d: isOption d.value) decls;
          in
          if opts != [ ] then
            if length decls == 1 then
              (head opts).value // { declarations = [ (head opts).file ]; }
            else
              throw "The option `${showOption loc}' is declared more than once (in ${
                concatStringsSep ", " (map (d: toString d.file) decls)
              })."
          else
            zipAttrsWith (n: ds: mergeDecls (loc ++ [ n ]) ds) (
              map
                (
                  d:
                  mapAttrs
                    (_: v: {
                      inherit (d) file;
                      value = v;
                    })
                    d.value
                )
                decls
            );

        declTree = mergeDecls prefix (
          map
            (m: {
              inherit (m) file;
              value = m.options;
            })
            collected
        );

        # nixpkgs' lib merges definitions in the reverse of the modules' collected order (and
        # in written order within one module); list-typed options show it.
        rootDefs = map
          (m: {
            inherit (m) file;
            value = m.config;
          })
          (reverseList collected);

        pushAll = defs: concatMap (d: map (v: d // { value = v; }) (pushDownProperties d.value)) defs;
        childDefs =
          pushed: n:
          concatMap
            (
              d:
              if d.value ? ${n} then
                [
                  {
                    inherit (d) file;
                    value = d.value.${n};
                  }
                ]
              else
                [ ]
            )
            pushed;

        evalNode =
          loc: decl: defs:
          if isOption decl then
            evalOptionValue loc decl defs
          else
            let
              pushed = pushAll defs;
            in
            mapAttrs (n: child: evalNode (loc ++ [ n ]) child (childDefs pushed n)) decl;

        options = evalNode prefix declTree rootDefs;

        valuesOf = node: if isOption node then node.value else mapAttrs (_: valuesOf) node;
        declaredConfig = valuesOf options;

        unmatched =
          rel: decl: defs:
          if isOption decl then
            [ ]
          else
            let
              pushed = pushAll defs;
              names = unique (concatMap (d: attrNames d.value) pushed);
            in
            concatMap
              (
                n:
                if decl ? ${n} then
                  unmatched (rel ++ [ n ]) decl.${n} (childDefs pushed n)
                else
                  map
                    (d: {
                      inherit (d) file value;
                      prefix = rel ++ [ n ];
                    })
                    (childDefs pushed n)
              )
              names;

        unmatchedDefns = unmatched [ ] declTree rootDefs;

        config =
          if freeformType != null && unmatchedDefns != [ ] then
            recursiveUpdate
              (freeformType.merge prefix (
                map
                  (d: {
                    inherit (d) file;
                    value = setAttrByPath d.prefix d.value;
                  })
                  unmatchedDefns
              ))
              declaredConfig
          else
            declaredConfig;

        checkUnmatched =
          if freeformType == null && unmatchedDefns != [ ] then
            let
              first = head unmatchedDefns;
            in
            throw "The option `${showOption (prefix ++ first.prefix)}' does not exist. Definition values:${
              showDefs [ first ]
            }"
          else
            null;
      in
      {
        options = builtins.seq checkUnmatched options;
        config = builtins.seq checkUnmatched config;
        _evaluator = "zib-minilib";
      };
  };
in
lib
